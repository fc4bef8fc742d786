// kernels/cuda/reduce.cu — reductions over the middle dim of [outer, reduce, inner] on the device
// (the specification is kernels/ref/reduce.cpp; the layout is described in kernels/reduce.h).
//
// Two shapes of work:
//   inner == 1 (reducing the last dims, the common case): each output row is cut into `chunks`
//     pieces, one block of kBlock threads per piece; thread t takes r = t, t + kBlock, ... and a
//     shared-memory tree combines the partials. With many rows one piece per row fills the GPU
//     (chunks = 1, one launch). With few long rows (a full sum of 64M values is ONE row) a single
//     block per row would leave all but one of the ~132 multiprocessors idle, so the rows are cut
//     into up to 1024 pieces and a second launch adds each row's partial results;
//   inner > 1 (e.g. a bias gradient: the sum over the batch of [batch, features]; or a per-channel
//     minimum over the batch, as a quantisation observer takes):
//     a block takes 32 neighbouring columns i and a piece of r; its 8 warps take every 8th r, each
//     warp reading 32 neighbouring values (one coalesced load), and the 8 partials of a column are
//     added in a fixed order. Few columns over a long r are cut into pieces the same way as rows.
//     max/min over columns use the same tiles and pieces.
// Floating sums accumulate in double, as the reference; the tree order is fixed, so results are
// the same on every run (not bit-equal to the reference's sequential order).
#include <algorithm>

#include "kernels/cuda/common.cuh"
#include "kernels/reduce.h"

namespace tb::kernels {
namespace {

// A reduction of length `reduce` cut into `count` pieces of `len` values (the last may be
// shorter), when `units` blocks would otherwise do it (one per row, or per tile of columns):
// enough pieces that the blocks fill the GPU several times over, each at least min_len long (so
// that the second pass, over the pieces' partials, is tiny). count 1 means one pass.
struct Pieces {
  int64_t count, len;
};
static Pieces pieces_for(int64_t units, int64_t reduce, int64_t min_len) {
  constexpr int64_t kTargetBlocks = 1024;
  if (units >= kTargetBlocks) return {1, reduce};
  int64_t by_size = (reduce + min_len - 1) / min_len;
  int64_t by_units = (kTargetBlocks + units - 1) / units;
  int64_t count = std::max<int64_t>(1, std::min(by_size, by_units));
  if (count == 1) return {1, reduce};
  int64_t len = (reduce + count - 1) / count;
  return {(reduce + len - 1) / len, len};
}

// Rows of `reduce` values cut into pieces of chunk_len (the last may be shorter); block b takes
// piece b % chunks of row b / chunks, values [begin, end) of that row.
struct RowPiece {
  int64_t row, begin, end;
};
__device__ inline RowPiece row_piece(int64_t reduce, int64_t chunks, int64_t chunk_len) {
  int64_t b = blockIdx.x, j = b % chunks;
  int64_t begin = j * chunk_len, end = begin + chunk_len < reduce ? begin + chunk_len : reduce;
  return {b / chunks, begin, end};
}

// ---- sum / mean --------------------------------------------------------------------------------
// out[o, i] = scale * sum_r x[o, r, i]; Acc is double for floats, int64 for int64.

// Block b: out[b] = scale * sum over its piece of x (or of (x - center[row])^2 when center is
// given: the second pass of the variance). In the first of two passes Out is Acc and scale 1;
// the second pass runs this same kernel over the partials, one piece per row.
template <typename In, typename Acc, typename Out>
__global__ void sum_pieces_kernel(const In* x, const double* center, Out* out, int64_t reduce,
                                  int64_t chunks, int64_t chunk_len, double scale) {
  RowPiece p = row_piece(reduce, chunks, chunk_len);
  const In* row = x + p.row * reduce;
  Acc acc = 0;
  if (center) {
    double c = center[p.row];
    for (int64_t r = p.begin + threadIdx.x; r < p.end; r += kBlock) {
      double d = (double)row[r] - c;
      acc += d * d;
    }
  } else {
    for (int64_t r = p.begin + threadIdx.x; r < p.end; r += kBlock) acc += (Acc)row[r];
  }
  acc = block_reduce(acc, SumOp{});
  if (threadIdx.x == 0) out[blockIdx.x] = scale == 1.0 ? (Out)acc : (Out)(acc * scale);
}

// out[o] = scale * sum_r f(x[o, r]) for `outer` rows, in one launch or two (see the top).
template <typename T, typename Acc, typename Out>
static void sum_rows(const T* x, const double* center, Out* out, int64_t outer, int64_t reduce,
                     double scale) {
  const Pieces pc = pieces_for(outer, reduce, 16384);
  if (pc.count == 1) {
    sum_pieces_kernel<T, Acc, Out><<<(unsigned)outer, kBlock, 0, cuda_stream()>>>(
        x, center, out, reduce, 1, reduce, scale);
    return;
  }
  const int64_t chunks = pc.count, chunk_len = pc.len;
  DeviceScratch partial(outer * chunks * sizeof(Acc));
  sum_pieces_kernel<T, Acc, Acc><<<(unsigned)(outer * chunks), kBlock, 0, cuda_stream()>>>(
      x, center, partial.as<Acc>(), reduce, chunks, chunk_len, 1.0);
  sum_pieces_kernel<Acc, Acc, Out><<<(unsigned)outer, kBlock, 0, cuda_stream()>>>(
      partial.as<Acc>(), nullptr, out, chunks, 1, chunks, scale);
}

// Columns: block b takes tile `tile` (32 columns) of outer index o and piece j of r; the result
// for column i goes to out[(o * chunks + j) * inner + i], so the partials of a two-pass sum are an
// [outer, chunks, inner] tensor that the second pass (this kernel again) reduces over chunks.
constexpr int kTileCols = 32, kTileRows = kBlock / kTileCols;
template <typename In, typename Acc, typename Out>
__global__ void sum_cols_pieces_kernel(const In* x, const double* center, Out* out, int64_t reduce,
                                       int64_t inner, int64_t tiles, int64_t chunks,
                                       int64_t chunk_len, double scale) {
  __shared__ Acc buf[kTileRows][kTileCols];
  int64_t b = blockIdx.x, j = b % chunks, tile = (b / chunks) % tiles, o = b / chunks / tiles;
  int lane = threadIdx.x % kTileCols, group = threadIdx.x / kTileCols;
  int64_t i = tile * kTileCols + lane;
  int64_t begin = j * chunk_len, end = begin + chunk_len < reduce ? begin + chunk_len : reduce;
  Acc acc = 0;
  if (i < inner) {
    const In* p = x + o * reduce * inner + i;
    if (center) {
      double c = center[o * inner + i];
      for (int64_t r = begin + group; r < end; r += kTileRows) {
        double d = (double)p[r * inner] - c;
        acc += d * d;
      }
    } else {
      for (int64_t r = begin + group; r < end; r += kTileRows) acc += (Acc)p[r * inner];
    }
  }
  buf[group][lane] = acc;
  __syncthreads();
  if (group == 0 && i < inner) {
    for (int g = 1; g < kTileRows; g++) acc += buf[g][lane];
    out[(o * chunks + j) * inner + i] = scale == 1.0 ? (Out)acc : (Out)(acc * scale);
  }
}

template <typename T, typename Acc, typename Out>
static void sum_cols(const T* x, const double* center, Out* out, int64_t outer, int64_t reduce,
                     int64_t inner, double scale) {
  int64_t tiles = (inner + kTileCols - 1) / kTileCols;
  const Pieces pc = pieces_for(outer * tiles, reduce, 512);
  TB_CHECK(outer * tiles * pc.count < (int64_t)1 << 31, "sum: {} x {} x {} is too large for one launch",
           outer, reduce, inner);
  if (pc.count == 1) {
    sum_cols_pieces_kernel<T, Acc, Out><<<(unsigned)(outer * tiles), kBlock, 0, cuda_stream()>>>(
        x, center, out, reduce, inner, tiles, 1, reduce, scale);
    return;
  }
  const int64_t chunks = pc.count, chunk_len = pc.len;
  DeviceScratch partial(outer * chunks * inner * sizeof(Acc));
  sum_cols_pieces_kernel<T, Acc, Acc><<<(unsigned)(outer * tiles * chunks), kBlock, 0,
                                        cuda_stream()>>>(x, center, partial.as<Acc>(), reduce,
                                                         inner, tiles, chunks, chunk_len, 1.0);
  sum_cols_pieces_kernel<Acc, Acc, Out><<<(unsigned)(outer * tiles), kBlock, 0, cuda_stream()>>>(
      partial.as<Acc>(), nullptr, out, chunks, inner, tiles, 1, chunks, scale);
}

// out[o, i] = scale * sum_r f(x[o, r, i]), f(x) = x, or (x - center[o, i])^2 (the variance).
template <typename T, typename Acc, typename Out>
static void sum_reduce(const T* x, const double* center, Out* out, int64_t outer, int64_t reduce,
                       int64_t inner, double scale) {
  TB_CHECK(outer < (int64_t)1 << 31, "sum: {} rows are too many for one launch", outer);
  if (inner == 1) sum_rows<T, Acc, Out>(x, center, out, outer, reduce, scale);
  else sum_cols<T, Acc, Out>(x, center, out, outer, reduce, inner, scale);
}

template <typename T, typename Acc>
static void launch_sum(const void* x, void* out, int64_t outer, int64_t reduce, int64_t inner,
                       double scale) {
  sum_reduce<T, Acc, T>((const T*)x, nullptr, (T*)out, outer, reduce, inner, scale);
  cuda_check_launch("sum");
}

void cuda_reduce_sum(DType dtype, const void* x, void* out, int64_t outer, int64_t reduce,
                     int64_t inner, double scale) {
  if (dtype == kInt64)
    TB_CHECK(scale == 1.0, "cuda_reduce_sum: int64 sums take scale 1, got {}", scale);
  if (dtype != kFloat32 && dtype != kFloat64 && dtype != kInt64) cuda_no_kernel("sum", dtype);
  if (outer * inner == 0) return;
  switch (dtype) {
    case kFloat32: return launch_sum<float, double>(x, out, outer, reduce, inner, scale);
    case kFloat64: return launch_sum<double, double>(x, out, outer, reduce, inner, scale);
    default: return launch_sum<int64_t, int64_t>(x, out, outer, reduce, inner, 1.0);
  }
}

// ---- max / min with their index -------------------------------------------------------------------

// Should candidate (v, r) replace (best, best_r)? NaN beats every number; among equals (two NaNs,
// or two equal numbers) the smaller index wins, so the FIRST extreme is returned as the reference.
template <typename T>
__device__ bool arg_better(ArgReduceOp op, T v, int64_t r, T best, int64_t best_r) {
  bool v_nan = v != v, best_nan = best != best;
  if (v_nan || best_nan) return v_nan && (!best_nan || r < best_r);
  if (v == best) return r < best_r;
  return op == ArgReduceOp::Max ? v > best : v < best;
}

// Block b: the best (value, index) over its piece. Candidate r's index is r, or index_in[r] in
// the second pass (over the first pass's per-piece winners, whose indices are positions in the
// original row). Either output may be nullptr.
template <typename T>
__global__ void arg_pieces_kernel(ArgReduceOp op, const T* x, const int64_t* index_in, T* values,
                                  int64_t* indices, int64_t reduce, int64_t chunks,
                                  int64_t chunk_len) {
  __shared__ T best_v[kBlock];
  __shared__ int64_t best_r[kBlock];
  RowPiece p = row_piece(reduce, chunks, chunk_len);
  const T* row = x + p.row * reduce;
  const int64_t* row_index = index_in ? index_in + p.row * reduce : nullptr;
  int t = threadIdx.x;
  // Every thread starts from its first element of the piece (or from the piece's first one).
  int64_t r0 = p.begin + t < p.end ? p.begin + t : p.begin;
  T bv = row[r0];
  int64_t br = row_index ? row_index[r0] : r0;
  for (int64_t r = r0 + kBlock; r < p.end; r += kBlock) {
    int64_t idx = row_index ? row_index[r] : r;
    if (arg_better(op, row[r], idx, bv, br)) bv = row[r], br = idx;
  }
  best_v[t] = bv;
  best_r[t] = br;
  __syncthreads();
  for (int s = kBlock / 2; s > 0; s >>= 1) {
    if (t < s && arg_better(op, best_v[t + s], best_r[t + s], best_v[t], best_r[t])) {
      best_v[t] = best_v[t + s];
      best_r[t] = best_r[t + s];
    }
    __syncthreads();
  }
  if (t == 0) {
    if (values) values[blockIdx.x] = best_v[0];
    if (indices) indices[blockIdx.x] = best_r[0];
  }
}

// The best of each of `outer` rows, in one launch or two (see the top of the file).
template <typename T>
static void arg_rows(ArgReduceOp op, const T* x, T* values, int64_t* indices, int64_t outer,
                     int64_t reduce) {
  const Pieces pc = pieces_for(outer, reduce, 16384);
  if (pc.count == 1) {
    arg_pieces_kernel<T><<<(unsigned)outer, kBlock, 0, cuda_stream()>>>(
        op, x, nullptr, values, indices, reduce, 1, reduce);
    return;
  }
  const int64_t chunks = pc.count, chunk_len = pc.len;
  DeviceScratch part_v(outer * chunks * sizeof(T)), part_i(outer * chunks * sizeof(int64_t));
  arg_pieces_kernel<T><<<(unsigned)(outer * chunks), kBlock, 0, cuda_stream()>>>(
      op, x, nullptr, part_v.as<T>(), part_i.as<int64_t>(), reduce, chunks, chunk_len);
  arg_pieces_kernel<T><<<(unsigned)outer, kBlock, 0, cuda_stream()>>>(
      op, part_v.as<T>(), part_i.as<int64_t>(), values, indices, chunks, 1, chunks);
}

// Columns: the tiles of sum_cols_pieces_kernel (32 columns, 8 warps taking every 8th r of a
// piece), each thread keeping its best (value, index); the 8 candidates of a column are combined
// in a fixed order with arg_better (ties go to the smaller index), so the FIRST extreme wins as in
// the reference. Candidate r's index is r, or index_in[o, r, i] in the second pass (over the
// per-piece winners [outer, chunks, inner], whose indices are positions in the original dim).
template <typename T>
__global__ void arg_cols_pieces_kernel(ArgReduceOp op, const T* x, const int64_t* index_in,
                                       T* values, int64_t* indices, int64_t reduce, int64_t inner,
                                       int64_t tiles, int64_t chunks, int64_t chunk_len) {
  __shared__ T best_v[kTileRows][kTileCols];
  __shared__ int64_t best_r[kTileRows][kTileCols];
  int64_t b = blockIdx.x, j = b % chunks, tile = (b / chunks) % tiles, o = b / chunks / tiles;
  int lane = threadIdx.x % kTileCols, group = threadIdx.x / kTileCols;
  int64_t i = tile * kTileCols + lane;
  int64_t begin = j * chunk_len, end = begin + chunk_len < reduce ? begin + chunk_len : reduce;
  bool any = i < inner && begin + group < end; // this thread has at least one candidate
  T bv = T(0);
  int64_t br = -1;
  if (any) {
    const T* p = x + o * reduce * inner + i;
    const int64_t* pi = index_in ? index_in + o * reduce * inner + i : nullptr;
    for (int64_t r = begin + group; r < end; r += kTileRows) {
      int64_t idx = pi ? pi[r * inner] : r;
      if (br < 0 || arg_better(op, p[r * inner], idx, bv, br)) bv = p[r * inner], br = idx;
    }
  }
  best_v[group][lane] = bv;
  best_r[group][lane] = br;
  __syncthreads();
  if (group == 0 && i < inner) {
    for (int g = 1; g < kTileRows; g++) {
      int64_t gr = best_r[g][lane];
      if (gr >= 0 && (br < 0 || arg_better(op, best_v[g][lane], gr, bv, br)))
        bv = best_v[g][lane], br = gr;
    }
    int64_t k = (o * chunks + j) * inner + i;
    if (values) values[k] = bv;
    if (indices) indices[k] = br;
  }
}

// The best of each column (o, i) over r, in one launch or two (as sum_cols).
template <typename T>
static void arg_cols(ArgReduceOp op, const T* x, T* values, int64_t* indices, int64_t outer,
                     int64_t reduce, int64_t inner) {
  int64_t tiles = (inner + kTileCols - 1) / kTileCols;
  const Pieces pc = pieces_for(outer * tiles, reduce, 512);
  TB_CHECK(outer * tiles * pc.count < (int64_t)1 << 31,
           "max/min: {} x {} x {} is too large for one launch", outer, reduce, inner);
  if (pc.count == 1) {
    arg_cols_pieces_kernel<T><<<(unsigned)(outer * tiles), kBlock, 0, cuda_stream()>>>(
        op, x, nullptr, values, indices, reduce, inner, tiles, 1, reduce);
    return;
  }
  const int64_t chunks = pc.count, chunk_len = pc.len;
  DeviceScratch part_v(outer * chunks * inner * sizeof(T));
  DeviceScratch part_i(outer * chunks * inner * sizeof(int64_t));
  arg_cols_pieces_kernel<T><<<(unsigned)(outer * tiles * chunks), kBlock, 0, cuda_stream()>>>(
      op, x, nullptr, part_v.as<T>(), part_i.as<int64_t>(), reduce, inner, tiles, chunks,
      chunk_len);
  arg_cols_pieces_kernel<T><<<(unsigned)(outer * tiles), kBlock, 0, cuda_stream()>>>(
      op, part_v.as<T>(), part_i.as<int64_t>(), values, indices, chunks, inner, tiles, 1, chunks);
}

template <typename T>
static void launch_arg(ArgReduceOp op, const void* x, void* values, int64_t* indices,
                       int64_t outer, int64_t reduce, int64_t inner) {
  if (inner == 1 && outer < (int64_t)1 << 31)
    arg_rows<T>(op, (const T*)x, (T*)values, indices, outer, reduce);
  else
    arg_cols<T>(op, (const T*)x, (T*)values, indices, outer, reduce, inner);
  cuda_check_launch(op == ArgReduceOp::Max ? "max" : "min");
}

void cuda_reduce_arg(ArgReduceOp op, DType dtype, const void* x, void* values, int64_t* indices,
                     int64_t outer, int64_t reduce, int64_t inner) {
  const char* name = op == ArgReduceOp::Max ? "max" : "min";
  TB_CHECK(reduce > 0, "{}: cannot reduce an empty dim", name);
  if (outer * inner == 0) return;
  switch (dtype) {
    case kFloat32: return launch_arg<float>(op, x, values, indices, outer, reduce, inner);
    case kFloat64: return launch_arg<double>(op, x, values, indices, outer, reduce, inner);
    case kInt64: return launch_arg<int64_t>(op, x, values, indices, outer, reduce, inner);
    default: cuda_no_kernel(name, dtype);
  }
}

// dx[o, r, i] = (r == indices[o, i]) ? dy[o, i] : 0, one thread per element of dx.
template <typename T>
__global__ void arg_backward_kernel(const T* dy, const int64_t* indices, T* dx, int64_t reduce,
                                    int64_t inner, int64_t n) {
  TB_GRID_STRIDE_LOOP(e, n) {
    int64_t i = e % inner, r = (e / inner) % reduce, o = e / (inner * reduce);
    int64_t k = o * inner + i;
    dx[e] = indices[k] == r ? dy[k] : T(0);
  }
}

void cuda_reduce_arg_backward(DType dtype, const void* dy, const int64_t* indices, void* dx,
                              int64_t outer, int64_t reduce, int64_t inner) {
  if (dtype != kFloat32 && dtype != kFloat64) cuda_no_kernel("max/min backward", dtype);
  int64_t n = outer * reduce * inner;
  if (n == 0) return;
  if (dtype == kFloat32)
    arg_backward_kernel<float><<<grid_for(n), kBlock, 0, cuda_stream()>>>(
        (const float*)dy, indices, (float*)dx, reduce, inner, n);
  else
    arg_backward_kernel<double><<<grid_for(n), kBlock, 0, cuda_stream()>>>(
        (const double*)dy, indices, (double*)dx, reduce, inner, n);
  cuda_check_launch("max/min backward");
}

// ---- variance (two passes, in double) -------------------------------------------------------------
// mean = sum_r x / reduce;  var = sum_r (x - mean)^2 / max(0, reduce - correction).

// mean = sum / reduce into a double scratch tensor [outer, inner], then the sum of (x - mean)^2,
// both with sum_reduce (so long reductions are cut into pieces too); mean is written out as T if
// asked for.
template <typename T>
static void launch_var(const void* xv, void* var, void* mean, int64_t outer, int64_t reduce,
                       int64_t inner, int64_t correction) {
  const T* x = (const T*)xv;
  DeviceScratch mean_d(outer * inner * sizeof(double));
  sum_reduce<T, double, double>(x, nullptr, mean_d.as<double>(), outer, reduce, inner,
                                1.0 / (double)reduce);
  int64_t div = reduce - correction > 0 ? reduce - correction : 0;
  sum_reduce<T, double, T>(x, mean_d.as<double>(), (T*)var, outer, reduce, inner,
                           1.0 / (double)div);
  if (mean) // a copy with conversion: a "sum" over one value
    sum_reduce<double, double, T>(mean_d.as<double>(), nullptr, (T*)mean, outer * inner, 1, 1,
                                  1.0);
  cuda_check_launch("var");
}

void cuda_reduce_var(DType dtype, const void* x, void* var, void* mean, int64_t outer,
                     int64_t reduce, int64_t inner, int64_t correction) {
  if (dtype != kFloat32 && dtype != kFloat64) cuda_no_kernel("var", dtype);
  if (outer * inner == 0) return;
  if (dtype == kFloat32) launch_var<float>(x, var, mean, outer, reduce, inner, correction);
  else launch_var<double>(x, var, mean, outer, reduce, inner, correction);
}

} // namespace

const ReduceKernels ReduceKernels::cuda = {
    .sum = cuda_reduce_sum,
    .arg = cuda_reduce_arg,
    .arg_backward = cuda_reduce_arg_backward,
    .var = cuda_reduce_var,
};

} // namespace tb::kernels
