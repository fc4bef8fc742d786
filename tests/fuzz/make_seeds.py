#!/usr/bin/env python3
"""Writes the fuzzers' seed corpora under tests/fuzz/corpus/<target>/ (committed; rerun to regenerate).

Small valid inputs of every format and variant a reader handles, so the fuzzer starts deep inside
each parser instead of rediscovering magic numbers. Plain Python (struct, zlib, gzip); the JPEG and
HDR seeds come from Debian's stb_image_write through a 20-line C program (skipped without `cc`).
The input layouts (flag bytes before the file) are described in tests/fuzz/harness.h.
"""
import gzip
import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import zlib

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "corpus")


def put(target, name, data):
    d = os.path.join(ROOT, target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


# ---- safetensors --------------------------------------------------------------------------------
def safetensors(tensors, metadata=None):
    """tensors: list of (name, dtype, shape, raw bytes)."""
    header, off, blob = {}, 0, b""
    if metadata is not None:
        header["__metadata__"] = metadata
    for name, dt, shape, raw in tensors:
        header[name] = {"dtype": dt, "shape": shape, "data_offsets": [off, off + len(raw)]}
        off += len(raw)
        blob += raw
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * ((8 - (8 + len(h)) % 8) % 8)
    return struct.pack("<Q", len(h)) + h + blob


def seeds_safetensors():
    put("safetensors", "empty", safetensors([]))
    put("safetensors", "metadata_f32", safetensors(
        [("weight", "F32", [2, 3], struct.pack("<6f", 1, -2, 3.5, 0, 1e-3, 7))],
        {"format": "pt", "epoch": "3"}))
    put("safetensors", "all_dtypes", safetensors([
        ("f64", "F64", [2], struct.pack("<2d", 1.5, -2)),
        ("f32", "F32", [1, 2], struct.pack("<2f", 0.25, 8)),
        ("f16", "F16", [3], struct.pack("<3H", 0x3C00, 0xC000, 0x7C00)),
        ("bf16", "BF16", [2, 2], struct.pack("<4H", 0x3F80, 0x4000, 0xBF80, 0x7FC0)),
        ("i64", "I64", [1], struct.pack("<q", -5)),
        ("i32", "I32", [2], struct.pack("<2i", 7, -9)),
        ("i8", "I8", [3], struct.pack("<3b", -1, 0, 1)),
        ("u8", "U8", [4], bytes([0, 1, 128, 255])),
        ("bool", "BOOL", [2], bytes([0, 1])),
        ("scalar", "F32", [], struct.pack("<f", 3)),
        ("zero", "F32", [0, 3], b""),
    ]))
    put("safetensors", "unicode_names", safetensors(
        [("layer.\u00e9\"q\\", "I32", [1, 1, 1], struct.pack("<i", 42)),
         ("\U0001F600", "U8", [2], b"\x01\x02")], {"k\n": "v\u2603"}))
    # the same layout the library writes (fields in another order, spaces)
    body = b'{ "b" : {"shape":[2],"dtype":"I8","data_offsets":[0,2]} , "a":{"data_offsets":[2,6],' \
           b'"shape":[1],"dtype":"F32"} }'
    put("safetensors", "spaces_order", struct.pack("<Q", len(body)) + body + b"\x01\x02" +
        struct.pack("<f", 1))


# ---- IDX ----------------------------------------------------------------------------------------
def idx(magic, dims, payload):
    return struct.pack(">I", magic) + b"".join(struct.pack(">I", d) for d in dims) + payload


def idx_input(flags, images, labels):
    return bytes([flags]) + struct.pack("<H", len(images)) + images + labels


def seeds_idx():
    img = idx(0x803, [2, 3, 4], bytes(range(24)))
    lab = idx(0x801, [2], bytes([3, 9]))
    put("idx", "plain", idx_input(0, img, lab))
    put("idx", "gzip_by_flags", idx_input(3, img, lab))
    put("idx", "gzip_raw", idx_input(0, gzip.compress(img, mtime=0), gzip.compress(lab, mtime=0)))
    put("idx", "one_pixel", idx_input(0, idx(0x803, [1, 1, 1], b"\xff"), idx(0x801, [1], b"\x00")))
    put("idx", "gzip_images_only", idx_input(1, idx(0x803, [3, 2, 2], bytes(12)),
                                             idx(0x801, [3], bytes([0, 1, 2]))))


# ---- CIFAR --------------------------------------------------------------------------------------
def seeds_cifar():
    pix = bytes((i * 7) % 256 for i in range(3072))
    put("cifar", "cifar10_one", b"\x00" + b"\x03" + pix)
    put("cifar", "cifar10_two", b"\x00" + b"\x09" + pix + b"\x00" + bytes(3072))
    put("cifar", "cifar100_one", b"\x01" + b"\x13\x63" + pix)


# ---- images -------------------------------------------------------------------------------------
def png(w, h, color_type, depth, rows, plte=None, trns=None, interlace=False):
    """rows: list of raw scanline bytes (without filter bytes) of the full image."""
    bpp_bits = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}[color_type] * depth

    def scan(lines, width):
        out, stride = b"", (width * bpp_bits + 7) // 8
        for k, line in enumerate(lines):
            f = k % 5 if depth == 8 else 0  # exercise every filter type on 8-bit images
            bpp = max(1, bpp_bits // 8)
            prev = lines[k - 1][:stride] if k else bytes(stride)
            cur = line[:stride]
            enc = bytearray()
            for i in range(stride):
                a = cur[i - bpp] if i >= bpp else 0
                b = prev[i]
                c = prev[i - bpp] if i >= bpp else 0
                pred = [0, a, b, (a + b) // 2,
                        min((a, b, c), key=lambda v: (abs(a + b - c - v), [a, b, c].index(v)))][f]
                enc.append((cur[i] - pred) % 256)
            out += bytes([f]) + bytes(enc)
        return out

    if not interlace:
        raw = scan(rows, w)
    else:  # Adam7: 8-bit samples only here
        assert depth == 8
        px = bpp_bits // 8
        raw = b""
        for x0, y0, dx, dy in [(0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4),
                               (1, 0, 2, 2), (0, 1, 1, 2)]:
            sub = [b"".join(rows[y][x * px:(x + 1) * px] for x in range(x0, w, dx))
                   for y in range(y0, h, dy)]
            if sub and sub[0]:
                raw += scan(sub, len(range(x0, w, dx)))

    def chunk(t, d):
        return struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d) & 0xFFFFFFFF)

    out = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, depth, color_type, 0, 0,
                                                             1 if interlace else 0))
    if plte:
        out += chunk(b"PLTE", plte)
    if trns:
        out += chunk(b"tRNS", trns)
    return out + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b"")


def bmp(w, h, bits, pixels_rows, palette=None):
    """pixels_rows: bottom-up rows of packed pixel bytes (unpadded)."""
    stride = (w * bits + 31) // 32 * 4
    data = b"".join(r + bytes(stride - len(r)) for r in pixels_rows)
    pal = b"".join(bytes([b, g, r, 0]) for r, g, b in (palette or []))
    off = 14 + 40 + len(pal)
    info = struct.pack("<IiiHHIIiiII", 40, w, h, 1, bits, 0, len(data), 2835, 2835, len(palette or []), 0)
    return b"BM" + struct.pack("<IHHI", off + len(data), 0, 0, off) + info + pal + data


def tga(w, h, kind, bpp, payload, cmap=None):
    cm_type = 1 if cmap else 0
    cm_spec = struct.pack("<HHB", 0, len(cmap) // 3, 24) if cmap else bytes(5)
    return struct.pack("<BBB", 0, cm_type, kind) + cm_spec + struct.pack("<HHHHBB", 0, 0, w, h, bpp, 0x20) + \
        (cmap or b"") + payload


def gif(w, h, palette, frames):
    """frames: list of index lists (w*h each). Minimal LZW: a clear code before every pixel run
    keeps codes at the initial width, which every decoder accepts."""
    min_code = 2
    clear, end = 1 << min_code, (1 << min_code) + 1

    def lzw(idxs):
        bits, nbits, out = 0, 0, bytearray()
        width = min_code + 1
        codes = []
        for k, v in enumerate(idxs):
            if k % 2 == 0:
                codes.append(clear)
            codes.append(v)
        codes.append(end)
        for c in codes:
            bits |= c << nbits
            nbits += width
            while nbits >= 8:
                out.append(bits & 0xFF)
                bits >>= 8
                nbits -= 8
        if nbits:
            out.append(bits & 0xFF)
        blocks = b""
        for i in range(0, len(out), 255):
            blocks += bytes([len(out[i:i + 255])]) + out[i:i + 255]
        return bytes([min_code]) + blocks + b"\x00"

    pal = b"".join(bytes(c) for c in palette) + bytes(3 * (4 - len(palette)))
    out = b"GIF89a" + struct.pack("<HHBBB", w, h, 0x80 | 0x01, 0, 0) + pal
    for idxs in frames:
        out += b"\x21\xF9\x04\x00\x0A\x00\x00\x00"  # graphic control: 0.1 s
        out += b"\x2C" + struct.pack("<HHHHB", 0, 0, w, h, 0) + lzw(idxs)
    return out + b"\x3B"


def with_channels(ch, data):
    return bytes([ch - 1]) + data


def seeds_image():
    put("image", "png_gray8", with_channels(1, png(3, 2, 0, 8, [b"\x00\x80\xff", b"\x10\x20\x30"])))
    put("image", "png_rgb8", with_channels(3, png(2, 3, 2, 8, [bytes(range(k, k + 6)) for k in (0, 50, 200)])))
    put("image", "png_rgba8", with_channels(4, png(2, 2, 6, 8, [bytes(range(8)), bytes(range(100, 108))])))
    put("image", "png_gray_alpha", with_channels(2, png(2, 2, 4, 8, [b"\x01\x02\x03\x04", b"\x05\x06\x07\x08"])))
    put("image", "png_palette_trns", with_channels(4, png(4, 1, 3, 2, [b"\x1b"], plte=bytes(range(12)), trns=b"\x00\x80")))
    put("image", "png_gray16", with_channels(1, png(2, 2, 0, 16, [b"\x12\x34\xff\xff", b"\x00\x00\x80\x00"])))
    put("image", "png_gray1", with_channels(3, png(9, 2, 0, 1, [b"\xa5\x80", b"\x0f\x00"])))
    put("image", "png_interlaced", with_channels(3, png(9, 9, 2, 8, [bytes((x * 3 + y * 17) % 256 for x in range(27))
                                                                    for y in range(9)], interlace=True)))
    put("image", "bmp24", with_channels(3, bmp(2, 2, 24, [b"\x00\x00\xff\x00\xff\x00", b"\xff\x00\x00\xff\xff\xff"])))
    put("image", "bmp8_palette", with_channels(1, bmp(3, 2, 8, [b"\x00\x01\x02", b"\x02\x01\x00"],
                                                      palette=[(255, 0, 0), (0, 255, 0), (0, 0, 255)])))
    put("image", "bmp32", with_channels(4, bmp(1, 2, 32, [b"\x01\x02\x03\x04", b"\x05\x06\x07\x08"])))
    put("image", "ppm_p6", with_channels(3, b"P6\n# c\n2 1\n255\n\x01\x02\x03\x04\x05\x06"))
    put("image", "pgm_p5", with_channels(1, b"P5 3 1 255 \x00\x7f\xff"))
    put("image", "pgm_p5_16bit", with_channels(1, b"P5 2 1 65535\n\x12\x34\xff\xff"))
    put("image", "tga_rgb", with_channels(3, tga(2, 1, 2, 24, b"\x01\x02\x03\x04\x05\x06")))
    put("image", "tga_rle", with_channels(4, tga(4, 1, 10, 32, b"\x83\x01\x02\x03\x04")))
    put("image", "tga_gray", with_channels(1, tga(2, 2, 3, 8, b"\x00\x40\x80\xc0")))
    put("image", "tga_colormap", with_channels(3, tga(2, 1, 1, 8, b"\x00\x01", cmap=b"\x00\x00\xff\xff\x00\x00")))
    put("image", "gif_static", with_channels(3, gif(2, 2, [(255, 0, 0), (0, 0, 255)], [[0, 1, 1, 0]])))
    put("image", "gif_two_frames", with_channels(4, gif(3, 1, [(0, 0, 0), (255, 255, 255), (9, 9, 9)],
                                                        [[0, 1, 2], [2, 2, 1]])))
    stb_seeds()


STB_PROGRAM = r"""
#define STB_IMAGE_WRITE_IMPLEMENTATION
#define STB_IMAGE_WRITE_STATIC
#include <stb/stb_image_write.h>
int main(int argc, char** argv) {
  unsigned char rgb[16 * 16 * 3], gray[16 * 16];
  float hdr[4 * 3 * 3];
  for (int i = 0; i < 16 * 16 * 3; i++) rgb[i] = (unsigned char)((i * 37) ^ (i >> 3));
  for (int i = 0; i < 16 * 16; i++) gray[i] = (unsigned char)(i * 5);
  for (int i = 0; i < 4 * 3 * 3; i++) hdr[i] = 0.01f * i * i;
  chdir(argv[1]);
  return !(stbi_write_jpg("jpeg_rgb_q95", 16, 16, 3, rgb, 95) &&
           stbi_write_jpg("jpeg_rgb_q40", 16, 16, 3, rgb, 40) &&
           stbi_write_jpg("jpeg_gray", 16, 16, 1, gray, 80) &&
           stbi_write_jpg("jpeg_odd_size", 7, 5, 3, rgb, 75) &&
           stbi_write_hdr("hdr_rgb", 4, 3, 3, hdr));
}
"""


def stb_seeds():
    cc = shutil.which("cc")
    if not cc or not os.path.exists("/usr/include/stb/stb_image_write.h"):
        print("make_seeds: no cc or stb_image_write.h: JPEG/HDR seeds skipped", file=sys.stderr)
        return
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "w.c")
        with open(src, "w") as f:
            f.write("#include <unistd.h>\n" + STB_PROGRAM)
        subprocess.run([cc, "-O1", "-o", os.path.join(tmp, "w"), src, "-lm"], check=True)
        subprocess.run([os.path.join(tmp, "w"), tmp], check=True)
        for name, ch in [("jpeg_rgb_q95", 3), ("jpeg_rgb_q40", 1), ("jpeg_gray", 1), ("jpeg_odd_size", 4),
                         ("hdr_rgb", 3)]:
            with open(os.path.join(tmp, name), "rb") as f:
                put("image", name, with_channels(ch, f.read()))


def pil_seeds():
    """Progressive JPEGs (stb_image_write writes baseline only), if Pillow is there."""
    try:
        from PIL import Image
    except ImportError:
        print("make_seeds: no Pillow: progressive JPEG seeds skipped", file=sys.stderr)
        return
    import io
    for name, mode, ch in [("jpeg_progressive_rgb", "RGB", 3), ("jpeg_progressive_gray", "L", 1)]:
        img = Image.new(mode, (19, 13))
        img.putdata([((x * 13 + y * 7) % 256,) * (3 if mode == "RGB" else 1) if mode == "RGB"
                     else (x * 13 + y * 7) % 256 for y in range(13) for x in range(19)])
        buf = io.BytesIO()
        img.save(buf, "JPEG", progressive=True, quality=85)
        put("image", name, with_channels(ch, buf.getvalue()))


if __name__ == "__main__":
    seeds_safetensors()
    seeds_idx()
    seeds_cifar()
    seeds_image()
    pil_seeds()
    for t in sorted(os.listdir(ROOT)):
        files = os.listdir(os.path.join(ROOT, t))
        size = sum(os.path.getsize(os.path.join(ROOT, t, f)) for f in files)
        print(f"make_seeds: {t}: {len(files)} files, {size} bytes")
