// Per-sample transforms (torchvision.transforms semantics), plain loops on CPU tensors.
//
// ToTensor takes a uint8 numpy-style image ([H, W] or [H, W, C]); the others take float32
// [C, H, W] or [H, W] (one channel) and keep that rank. Random transforms draw from the Generator
// they are handed, so a DataLoader gives the same augmentation for any number of workers.
#include <tb/data.h>

#include <cmath>
#include <cstring>

namespace tb::data {

namespace {

// A float32 image as contiguous [c, h, w]; `chw` remembers whether the tensor had a channel dim.
struct Image {
  Tensor t;
  const float* p = nullptr;
  int64_t c = 1, h = 0, w = 0;
  bool chw = true;
};

Image float_image(const char* op, const Tensor& x) {
  check_defined(op, x, "image");
  TB_CHECK(x.device().is_cpu(), "{}: expected a CPU image, got one on {}", op, x.device());
  TB_CHECK(x.dtype() == kFloat32 && (x.dim() == 2 || x.dim() == 3),
           "{}: expected a float32 image [C, H, W] or [H, W] (apply ToTensor first), got {} {}",
           op, x.dtype(), shape_str(x.shape()));
  Image im;
  im.t = x.contiguous();
  im.p = im.t.data<float>();
  im.chw = x.dim() == 3;
  im.c = im.chw ? x.size(0) : 1;
  im.h = x.size(-2);
  im.w = x.size(-1);
  return im;
}

Tensor new_image(const Image& like, int64_t h, int64_t w) {
  return like.chw ? empty({like.c, h, w}, kFloat32) : empty({h, w}, kFloat32);
}

// out[c, y, x] = in[c, top + y, left + x], zero where that falls outside the image (padding).
Tensor crop_or_pad(const Image& im, int64_t top, int64_t left, int64_t oh, int64_t ow) {
  Tensor out = new_image(im, oh, ow);
  float* o = out.data<float>();
  for (int64_t c = 0; c < im.c; c++)
    for (int64_t y = 0; y < oh; y++) {
      const int64_t sy = top + y;
      float* orow = o + (c * oh + y) * ow;
      if (sy < 0 || sy >= im.h) {
        std::memset(orow, 0, ow * sizeof(float));
        continue;
      }
      const float* irow = im.p + (c * im.h + sy) * im.w;
      for (int64_t x = 0; x < ow; x++) {
        const int64_t sx = left + x;
        orow[x] = (sx >= 0 && sx < im.w) ? irow[sx] : 0.0f;
      }
    }
  return out;
}

// A uniform integer in [0, n).
int64_t uniform_int(Generator& g, int64_t n) { return (int64_t)(g.next_u64() % (uint64_t)n); }

} // namespace

Tensor Compose::operator()(const Tensor& x, Generator& g) const {
  Tensor y = x;
  for (const auto& t : transforms) {
    TB_CHECK(t != nullptr, "Compose: empty transform in the list");
    y = t(y, g);
  }
  return y;
}

// x / 255 as float32, HWC -> CHW (torchvision: img.permute(2, 0, 1).float().div(255)).
Tensor ToTensor::operator()(const Tensor& x) const {
  check_defined("ToTensor", x, "image");
  TB_CHECK(x.device().is_cpu() && x.dtype() == kUInt8 && (x.dim() == 2 || x.dim() == 3),
           "ToTensor: expected a uint8 CPU image [H, W] or [H, W, C], got {} {} on {}",
           x.dtype(), shape_str(x.shape()), x.device());
  Tensor xc = x.contiguous();
  const uint8_t* p = xc.data<uint8_t>();
  const int64_t h = x.size(0), w = x.size(1), c = x.dim() == 3 ? x.size(2) : 1;
  Tensor out = empty({c, h, w}, kFloat32);
  float* o = out.data<float>();
  for (int64_t k = 0; k < c; k++)
    for (int64_t i = 0; i < h * w; i++) o[k * h * w + i] = (float)p[i * c + k] / 255.0f;
  return out;
}
Tensor ToTensor::operator()(const Tensor& x, Generator&) const { return (*this)(x); }

Normalize::Normalize(std::vector<double> m, std::vector<double> s)
    : mean(std::move(m)), std(std::move(s)) {
  TB_CHECK(!mean.empty() && mean.size() == std.size(),
           "Normalize: mean and std need the same number (>= 1) of values, got {} and {}",
           mean.size(), std.size());
  for (double v : std) TB_CHECK((float)v != 0.0f, "Normalize: std must be non-zero, got {}", v);
}

// (x - mean[c]) / std[c], in float32 like torchvision (tensor.sub_(mean).div_(std)).
Tensor Normalize::operator()(const Tensor& x) const {
  Image im = float_image("Normalize", x);
  TB_CHECK(mean.size() == 1 || (int64_t)mean.size() == im.c,
           "Normalize: {} mean/std values for an image with {} channels ({})", mean.size(), im.c,
           shape_str(x.shape()));
  Tensor out = new_image(im, im.h, im.w);
  float* o = out.data<float>();
  const int64_t hw = im.h * im.w;
  for (int64_t c = 0; c < im.c; c++) {
    const float m = (float)mean[mean.size() == 1 ? 0 : c], s = (float)std[std.size() == 1 ? 0 : c];
    for (int64_t i = 0; i < hw; i++) o[c * hw + i] = (im.p[c * hw + i] - m) / s;
  }
  return out;
}
Tensor Normalize::operator()(const Tensor& x, Generator&) const { return (*this)(x); }

RandomCrop::RandomCrop(int64_t h, int64_t w, int64_t pad) : size_h(h), size_w(w), padding(pad) {
  TB_CHECK(h > 0 && w > 0 && pad >= 0, "RandomCrop: need size > 0 and padding >= 0, got {}×{}, {}",
           h, w, pad);
}

// Pad by `padding` zeros, then top i ~ U{0..H+2p-h}, left j ~ U{0..W+2p-w}.
Tensor RandomCrop::operator()(const Tensor& x, Generator& g) const {
  Image im = float_image("RandomCrop", x);
  const int64_t ph = im.h + 2 * padding, pw = im.w + 2 * padding;
  TB_CHECK(size_h <= ph && size_w <= pw,
           "RandomCrop: crop {}×{} is larger than the padded image {}×{} (input {}, padding {})",
           size_h, size_w, ph, pw, shape_str(x.shape()), padding);
  int64_t i = 0, j = 0;
  if (ph != size_h || pw != size_w) {
    i = uniform_int(g, ph - size_h + 1);
    j = uniform_int(g, pw - size_w + 1);
  }
  return crop_or_pad(im, i - padding, j - padding, size_h, size_w);
}

RandomHorizontalFlip::RandomHorizontalFlip(double prob) : p(prob) {
  TB_CHECK(p >= 0 && p <= 1, "RandomHorizontalFlip: p must be in [0, 1], got {}", p);
}

Tensor RandomHorizontalFlip::operator()(const Tensor& x, Generator& g) const {
  Image im = float_image("RandomHorizontalFlip", x);
  if (!(g.next_double() < p)) return x;
  Tensor out = new_image(im, im.h, im.w);
  float* o = out.data<float>();
  for (int64_t r = 0; r < im.c * im.h; r++)
    for (int64_t c = 0; c < im.w; c++) o[r * im.w + c] = im.p[r * im.w + im.w - 1 - c];
  return out;
}

Resize::Resize(int64_t h, int64_t w) : size_h(h), size_w(w) {
  TB_CHECK(h > 0 && (w > 0 || w == -1), "Resize: sizes must be positive, got {}, {}", h, w);
}

// Bilinear, align_corners = False (ATen's upsample_bilinear2d, in float32 like its CPU kernel):
//   src = max(0, (dst + 0.5) * in / out - 0.5),  i0 = floor(src),  i1 = min(i0 + 1, in - 1),
//   l1 = src - i0,  l0 = 1 - l1;   out = l0h (l0w a00 + l1w a01) + l1h (l0w a10 + l1w a11).
Tensor Resize::operator()(const Tensor& x) const {
  Image im = float_image("Resize", x);
  int64_t oh = size_h, ow = size_w;
  if (size_w < 0) { // shorter side -> size_h, longer side int(size * long / short) (torchvision)
    const int64_t shorter = std::min(im.h, im.w), longer = std::max(im.h, im.w);
    const int64_t new_long = (int64_t)((double)(size_h * longer) / (double)shorter);
    oh = im.h <= im.w ? size_h : new_long;
    ow = im.h <= im.w ? new_long : size_h;
  }
  TB_CHECK(im.h > 0 && im.w > 0 && oh > 0 && ow > 0, "Resize: cannot resize {} to {}×{}",
           shape_str(x.shape()), oh, ow);
  if (oh == im.h && ow == im.w) return im.t; // torchvision returns the input as is

  struct Tap { int64_t i0, i1; float l0, l1; };
  auto taps = [](int64_t in, int64_t out) {
    std::vector<Tap> t(out);
    const float scale = (float)in / (float)out;
    for (int64_t d = 0; d < out; d++) {
      float src = scale * ((float)d + 0.5f) - 0.5f;
      if (src < 0) src = 0;
      int64_t i0 = std::min((int64_t)std::floor(src), in - 1);
      float l1 = std::min(std::max(src - (float)i0, 0.0f), 1.0f);
      t[d] = {i0, i0 + (i0 < in - 1 ? 1 : 0), 1.0f - l1, l1};
    }
    return t;
  };
  const std::vector<Tap> ty = taps(im.h, oh), tx = taps(im.w, ow);
  Tensor out = new_image(im, oh, ow);
  float* o = out.data<float>();
  for (int64_t c = 0; c < im.c; c++) {
    const float* in = im.p + c * im.h * im.w;
    for (int64_t y = 0; y < oh; y++) {
      const float* r0 = in + ty[y].i0 * im.w;
      const float* r1 = in + ty[y].i1 * im.w;
      for (int64_t xx = 0; xx < ow; xx++) {
        const Tap& t = tx[xx];
        const float top = t.l0 * r0[t.i0] + t.l1 * r0[t.i1];
        const float bot = t.l0 * r1[t.i0] + t.l1 * r1[t.i1];
        o[(c * oh + y) * ow + xx] = ty[y].l0 * top + ty[y].l1 * bot;
      }
    }
  }
  return out;
}
Tensor Resize::operator()(const Tensor& x, Generator&) const { return (*this)(x); }

CenterCrop::CenterCrop(int64_t h, int64_t w) : size_h(h), size_w(w) {
  TB_CHECK(h > 0 && w > 0, "CenterCrop: sizes must be positive, got {}×{}", h, w);
}

// top = round((H - h) / 2) with Python's half-to-even round; a crop larger than the image pads
// (h - H) / 2 zeros on top (floor) and the rest below, as torchvision.
Tensor CenterCrop::operator()(const Tensor& x) const {
  Image im = float_image("CenterCrop", x);
  auto start = [](int64_t in, int64_t crop) -> int64_t {
    if (crop > in) return -((crop - in) / 2);
    return (int64_t)std::nearbyint((double)(in - crop) / 2.0);
  };
  return crop_or_pad(im, start(im.h, size_h), start(im.w, size_w), size_h, size_w);
}
Tensor CenterCrop::operator()(const Tensor& x, Generator&) const { return (*this)(x); }

} // namespace tb::data
