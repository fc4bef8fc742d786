#!/usr/bin/env node
// ONNX Runtime's side of `tb bench`: times an exported model (tools/export_onnx.py) with
// onnxruntime-node on the CPU and prints the same keys as `tb bench --json` where they apply.
//   node tools/bench_onnxruntime.mjs FILE.onnx [--batch N] [--threads T] [--warmup W] [--iters I]
//       [--model NAME] [--seed S] [--check REF.safetensors] [--check-tol 1e-4] [--json]
// Session: CPU execution provider only, intraOpNumThreads = T (ORT's pool: the calling thread and
// T-1 workers), interOpNumThreads = 1, graphOptimizationLevel 'all', executionMode 'sequential'.
// Input: the model's one float input, of the fixed shape it was exported with (--batch must match
// it), filled with seeded normal random numbers. Latency: each session.run timed on its own,
// percentiles by linear interpolation (numpy.percentile's default, as tb and bench_infer_torch.py).
// cpu_per_wall: process CPU time (all threads) over wall time of the timed loop, i.e. how many
// cores ORT really kept busy.
// --check REF: runs REF's "input" (written by export_onnx.py --reference with PyTorch's eval
// "output") and fails (exit 1) unless max|ort - torch| <= tol * max|torch|.
// Install (once): cd tools/onnxruntime && ONNXRUNTIME_NODE_INSTALL=skip npm install
// (the post-install step would download GPU files; the CPU provider is in the package).
import { createRequire } from 'node:module';
import { readFileSync, readdirSync, statSync } from 'node:fs';
import { basename, dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const here = dirname(fileURLToPath(import.meta.url));
const require = createRequire(join(here, 'onnxruntime', 'package.json'));

function die(msg) {
  console.error(`bench_onnxruntime: ${msg}`);
  process.exit(2);
}

function parseArgs(argv) {
  const a = { file: null, batch: null, threads: 0, warmup: 10, iters: 100, model: null, seed: 0,
              check: null, checkTol: 1e-4, json: false };
  const ints = { '--batch': 'batch', '--threads': 'threads', '--warmup': 'warmup', '--iters': 'iters',
                 '--seed': 'seed' };
  for (let i = 0; i < argv.length; i++) {
    const k = argv[i];
    const next = () => {
      if (i + 1 >= argv.length) die(`${k}: expected a value`);
      return argv[++i];
    };
    if (k in ints) {
      const v = next();
      if (!/^\d+$/.test(v)) die(`${k} '${v}': expected a non-negative integer`);
      a[ints[k]] = Number(v);
    } else if (k === '--model') a.model = next();
    else if (k === '--check') a.check = next();
    else if (k === '--check-tol') {
      const v = next();
      a.checkTol = Number(v);
      if (!(a.checkTol > 0)) die(`--check-tol '${v}': expected a positive number`);
    } else if (k === '--json') a.json = true;
    else if (k === '-h' || k === '--help') {
      console.log(readFileSync(fileURLToPath(import.meta.url), 'utf8').split('\n').slice(1, 16)
        .map((l) => l.replace(/^\/\/ ?/, '')).join('\n'));
      process.exit(0);
    } else if (k.startsWith('-')) die(`unknown option ${k}`);
    else if (a.file === null) a.file = k;
    else die(`unexpected argument ${k}`);
  }
  if (a.file === null) die('usage: bench_onnxruntime.mjs FILE.onnx [--batch N] [--threads T] ... (--help)');
  if (a.batch !== null && a.batch < 1) die(`--batch ${a.batch}: expected >= 1`);
  if (a.iters < 1 && a.check === null) die('--iters 0: nothing to do without --check');
  return a;
}

// Seeded normal random numbers (mulberry32 + Box-Muller): reproducible input, torch.randn's law.
function randn(n, seed) {
  let s = (seed + 0x9e3779b9) >>> 0;
  const uniform = () => {
    s = (s + 0x6d2b79f5) >>> 0;
    let t = s;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return (((t ^ (t >>> 14)) >>> 0) + 0.5) / 4294967296;  // in (0, 1)
  };
  const out = new Float32Array(n);
  for (let i = 0; i < n; i += 2) {
    const r = Math.sqrt(-2 * Math.log(uniform())), th = 2 * Math.PI * uniform();
    out[i] = r * Math.cos(th);
    if (i + 1 < n) out[i + 1] = r * Math.sin(th);
  }
  return out;
}

// safetensors (tools/safetensors_io.py): u64 LE header length, JSON header, raw LE data. F32 only.
function loadSafetensors(path) {
  const buf = readFileSync(path);
  const n = Number(buf.readBigUInt64LE(0));
  const header = JSON.parse(buf.subarray(8, 8 + n).toString('utf8'));
  const out = {};
  for (const [name, info] of Object.entries(header)) {
    if (name === '__metadata__') continue;
    if (info.dtype !== 'F32') die(`${path}: tensor ${name} is ${info.dtype}, expected F32`);
    const [b, e] = info.data_offsets;
    const bytes = buf.subarray(8 + n + b, 8 + n + e);
    const data = new Float32Array(bytes.length / 4);
    for (let i = 0; i < data.length; i++) data[i] = bytes.readFloatLE(4 * i);
    out[name] = { shape: info.shape, data };
  }
  return out;
}

function percentile(sorted, q) {
  const pos = (q / 100) * (sorted.length - 1), lo = Math.floor(pos), hi = Math.ceil(pos);
  return sorted[lo] + (sorted[hi] - sorted[lo]) * (pos - lo);
}

const osThreads = () => readdirSync('/proc/self/task').length;

async function main() {
  const a = parseArgs(process.argv.slice(2));
  let ort, version;
  try {
    ort = require('onnxruntime-node');
    version = require('onnxruntime-node/package.json').version;
  } catch (e) {
    die(`onnxruntime-node is not installed under ${join(here, 'onnxruntime')} ` +
        `(cd tools/onnxruntime && ONNXRUNTIME_NODE_INSTALL=skip npm install): ${e.message}`);
  }
  let size;
  try {
    size = statSync(a.file).size;
  } catch (e) {
    die(`${a.file}: ${e.message}`);
  }

  const threadsBefore = osThreads();
  const options = { executionProviders: ['cpu'], intraOpNumThreads: a.threads, interOpNumThreads: 1,
                    graphOptimizationLevel: 'all', executionMode: 'sequential' };
  const session = await ort.InferenceSession.create(a.file, options);
  const ortThreads = osThreads() - threadsBefore;
  if (session.inputNames.length !== 1 || session.outputNames.length !== 1)
    die(`${a.file}: expected one input and one output, got inputs [${session.inputNames}] ` +
        `and outputs [${session.outputNames}]`);
  const meta = session.inputMetadata[0];
  const shape = meta.shape;
  if (!meta.isTensor || meta.type !== 'float32' || !shape.every((d) => typeof d === 'number' && d > 0))
    die(`${a.file}: input ${meta.name} is ${meta.type} [${shape}]: expected float32 of a fixed shape ` +
        '(tools/export_onnx.py exports one)');
  if (shape.length < 2) die(`${a.file}: input ${meta.name} [${shape}]: expected a batch dimension`);
  if (a.batch !== null && a.batch !== shape[0])
    die(`${a.file}: exported for batch ${shape[0]} (input [${shape}]), --batch ${a.batch} asked: ` +
        're-export with tools/export_onnx.py --batch');
  const batch = shape[0];
  const inName = meta.name, outName = session.outputNames[0];
  const numel = shape.reduce((p, d) => p * d, 1);

  let check = null;
  if (a.check !== null) {
    const ref = loadSafetensors(a.check);
    if (!ref.input || !ref.output) die(`${a.check}: expected tensors "input" and "output"`);
    if (ref.input.shape.join('x') !== shape.join('x'))
      die(`${a.check}: input [${ref.input.shape}] but the model takes [${shape}]`);
    const y = (await session.run({ [inName]: new ort.Tensor('float32', ref.input.data, shape) }))[outName];
    if (y.dims.join('x') !== ref.output.shape.join('x'))
      die(`${a.check}: output [${ref.output.shape}] but ONNX Runtime gave [${y.dims}]`);
    let err = 0, scale = 0;
    for (let i = 0; i < y.data.length; i++) {
      err = Math.max(err, Math.abs(y.data[i] - ref.output.data[i]));
      scale = Math.max(scale, Math.abs(ref.output.data[i]));
    }
    const rel = scale > 0 ? err / scale : err;
    check = { reference: a.check, max_abs_err: err, max_abs_ref: scale, rel_err: rel, tol: a.checkTol,
              pass: rel <= a.checkTol };
    if (!a.json)
      console.log(`check against ${a.check}: max|ort - torch| ${err.toExponential(3)}, max|torch| ` +
                  `${scale.toExponential(3)}, relative ${rel.toExponential(3)} (tol ${a.checkTol}): ` +
                  (check.pass ? 'ok' : 'FAILED'));
  }

  const x = new ort.Tensor('float32', randn(numel, a.seed), shape);
  const feeds = { [inName]: x };
  for (let i = 0; i < a.warmup; i++) await session.run(feeds);
  const ms = [];
  const cpu0 = process.cpuUsage(), wall0 = process.hrtime.bigint();
  for (let i = 0; i < a.iters; i++) {
    const t0 = process.hrtime.bigint();
    await session.run(feeds);
    ms.push(Number(process.hrtime.bigint() - t0) / 1e6);
  }
  const wallUs = Number(process.hrtime.bigint() - wall0) / 1e3, cpu = process.cpuUsage(cpu0);
  await session.release();
  const cpuPerWall = a.iters > 0 ? (cpu.user + cpu.system) / wallUs : null;

  const sorted = [...ms].sort((p, q) => p - q);
  const mean = ms.length ? ms.reduce((s, v) => s + v, 0) / ms.length : null;
  const lat = ms.length ? { mean, p50: percentile(sorted, 50), p95: percentile(sorted, 95),
                            p99: percentile(sorted, 99) } : null;
  const runtime = `onnxruntime-node ${version}`;
  const notes = `${runtime}, cpu execution provider, intra-op ${a.threads || 'default'} / inter-op 1 ` +
                `threads, graph optimization all, sequential; ${ortThreads} OS threads added by the ` +
                `session; cpu/wall ${cpuPerWall === null ? '-' : cpuPerWall.toFixed(2)}`;
  const out = { model: a.model ?? basename(a.file).replace(/\.onnx$/, ''), precision: 'fp32', batch,
                input: shape.slice(1), threads: a.threads, warmup: a.warmup, iters: a.iters,
                images_per_s: mean ? batch / (mean / 1000) : null, latency_ms: lat, params: null,
                madds: null, size_bytes: size, peak_bytes: null, runtime, cpu_per_wall: cpuPerWall,
                notes };
  if (check) out.check = check;
  if (a.json) console.log(JSON.stringify(out));
  else if (lat)
    console.log(`${out.model} fp32 (${notes}), batch ${batch}, input ${out.input.join('x')}: ` +
                `p50 ${lat.p50.toFixed(3)} ms, mean ${lat.mean.toFixed(3)}, p95 ${lat.p95.toFixed(3)}, ` +
                `p99 ${lat.p99.toFixed(3)}; ${out.images_per_s.toFixed(1)} images/s`);
  if (check && !check.pass) process.exit(1);
}

main().catch((e) => die(e.stack ?? String(e)));
