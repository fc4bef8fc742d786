// Core: dtypes, shapes, views, copies, factories, random, printing, the allocator, errors.
#include "gradcheck.h"

#include <cmath>
#include <sstream>

using namespace tb;
using tbtest::check_error;

TEST_SUITE("core") {

TEST_CASE("dtype sizes, names and promotion") {
  CHECK(dtype_size(kFloat16) == 2);
  CHECK(dtype_size(kInt64) == 8);
  CHECK(std::string(dtype_name(kBFloat16)) == "bfloat16");
  CHECK(promote_types(kInt64, kFloat32) == kFloat32);
  CHECK(promote_types(kFloat32, kFloat64) == kFloat64);
  CHECK(promote_types(kBool, kInt32) == kInt32);
  CHECK(promote_types(kFloat16, kBFloat16) == kFloat32);
}

TEST_CASE("half and bfloat16 conversions round to nearest even") {
  for (float f : {0.0f, 1.0f, -2.5f, 65504.0f, 6.1035156e-05f, 5.9604645e-08f, 0.333333f})
    CHECK(half_to_float(float_to_half(f)) == doctest::Approx(f).epsilon(1e-3));
  CHECK(std::isinf(half_to_float(float_to_half(1e6f))));
  CHECK(half_to_float(float_to_half(1.0f + 1.0f / 2048)) == 1.0f); // tie -> even
  CHECK(bfloat16_to_float(float_to_bfloat16(1.0f)) == 1.0f);
  CHECK(bfloat16_to_float(float_to_bfloat16(3.14159f)) == doctest::Approx(3.140625f));
  CHECK(std::isnan(bfloat16_to_float(float_to_bfloat16(NAN))));
}

TEST_CASE("every dtype round-trips through float64") {
  Tensor src = from_vector(std::vector<double>{0, 1, 2, 3, 100, -3}, {6});
  for (DType t : {kFloat32, kFloat64, kFloat16, kBFloat16, kInt8, kInt32, kInt64}) {
    Tensor c = src.to(t);
    CHECK(c.dtype() == t);
    CHECK(c.to(kFloat64).to_vector() == src.to_vector());
  }
  CHECK(src.to(kBool).to_vector() == std::vector<double>{0, 1, 1, 1, 1, 1});
  CHECK(from_vector(std::vector<double>{2.7, -2.7}, {2}).to(kInt32).to_vector() ==
        std::vector<double>{2, -2}); // truncation toward zero, as PyTorch
}

TEST_CASE("factories") {
  CHECK(zeros({2, 3}).to_vector() == std::vector<double>(6, 0.0));
  CHECK(ones({2}, kInt64).to_vector() == std::vector<double>{1, 1});
  CHECK(full({2, 2}, 7.5, kFloat64).to_vector() == std::vector<double>(4, 7.5));
  CHECK(arange(5).to_vector() == std::vector<double>{0, 1, 2, 3, 4});
  CHECK(arange(1.0, 2.0, 0.25, kFloat32).to_vector() == std::vector<double>{1, 1.25, 1.5, 1.75});
  CHECK(scalar_tensor(3.0).item() == 3.0);
  CHECK(scalar_tensor(3.0).dim() == 0);
  float raw[4] = {1, 2, 3, 4};
  Tensor b = from_blob(raw, {2, 2});
  raw[3] = 9;
  CHECK(b.to_vector()[3] == 9); // shares the memory
  Tensor c = from_buffer(raw, {4});
  raw[0] = -1;
  CHECK(c.to_vector()[0] == 1); // copied
  check_error([] { from_vector(std::vector<float>{1, 2, 3}, {2, 2}); }, {"from_vector", "[2, 2]"});
  check_error([] { zeros({-1, 2}); }, {"negative"});
}

TEST_CASE("random tensors are reproducible from a seed") {
  Generator g1(42), g2(42), g3(43);
  CHECK(randn({10}, {}, &g1).to_vector() == randn({10}, {}, &g2).to_vector());
  CHECK(randn({10}, {}, &g3).to_vector() != randn({10}, {}, &g1).to_vector());
  manual_seed(7);
  auto a = rand({5}).to_vector();
  manual_seed(7);
  CHECK(rand({5}).to_vector() == a);
  // moments of a large sample
  Generator g(1);
  auto v = randn({20000}, kFloat64, &g).to_vector();
  double m = 0, s = 0;
  for (double x : v) m += x;
  m /= v.size();
  for (double x : v) s += (x - m) * (x - m);
  s = std::sqrt(s / v.size());
  CHECK(std::abs(m) < 0.03);
  CHECK(std::abs(s - 1) < 0.03);
  auto u = rand({20000}, kFloat64, &g).to_vector();
  CHECK(*std::min_element(u.begin(), u.end()) >= 0.0);
  CHECK(*std::max_element(u.begin(), u.end()) < 1.0);
  auto p = randperm(100, &g).to_int_vector();
  std::sort(p.begin(), p.end());
  for (int i = 0; i < 100; i++) CHECK(p[i] == i);
  auto r = randint(3, 6, {1000}, kInt64, &g).to_int_vector();
  CHECK(*std::min_element(r.begin(), r.end()) == 3);
  CHECK(*std::max_element(r.begin(), r.end()) == 5);
}

TEST_CASE("initialisers follow torch.nn.init bounds") {
  Generator g(0);
  Tensor w = empty({64, 32, 3, 3});
  kaiming_uniform_(w, std::sqrt(5.0), "fan_in", "leaky_relu", &g);
  // gain sqrt(2/(1+5)) , bound = sqrt(3) * gain / sqrt(fan_in) = 1/sqrt(fan_in)
  double bound = 1.0 / std::sqrt(32.0 * 9);
  auto v = w.to_vector();
  CHECK(*std::max_element(v.begin(), v.end()) <= bound);
  CHECK(*std::max_element(v.begin(), v.end()) > 0.9 * bound);
  Tensor x = empty({100, 200});
  xavier_uniform_(x, 1.0, &g);
  auto xv = x.to_vector();
  CHECK(*std::max_element(xv.begin(), xv.end()) <= std::sqrt(6.0 / 300));
  CHECK(fan_in_out({16, 4, 3, 3}) == std::pair<int64_t, int64_t>{36, 144});
  check_error([] { calculate_gain("swish"); }, {"calculate_gain", "swish"});
}

TEST_CASE("views share storage and follow PyTorch semantics") {
  Tensor x = arange(0.0, 24.0, 1.0, kFloat32).reshape({2, 3, 4});
  CHECK(x.is_contiguous());
  Tensor p = x.permute({2, 0, 1});
  CHECK(p.shape() == Shape{4, 2, 3});
  CHECK(p.strides() == Shape{1, 12, 4});
  CHECK(!p.is_contiguous());
  CHECK(p.storage() == x.storage());
  CHECK(p.contiguous().to_vector()[1] == 4); // p[0][0][1] = x[0][1][0]
  Tensor t = x.transpose(0, 2);
  CHECK(t.shape() == Shape{4, 3, 2});
  Tensor n = x.narrow(2, 1, 2);
  CHECK(n.shape() == Shape{2, 3, 2});
  CHECK(n.to_vector()[0] == 1);
  CHECK(x.select(1, 2).to_vector() == std::vector<double>{8, 9, 10, 11, 20, 21, 22, 23});
  CHECK(x[1].shape() == Shape{3, 4});
  CHECK(x.slice(2, 0, 4, 2).to_vector()[1] == 2);
  CHECK(x.slice(2, -2, 4).to_vector()[0] == 2);
  Tensor e = from_vector(std::vector<float>{1, 2, 3}, {3, 1}).expand({3, 4});
  CHECK(e.strides() == Shape{1, 0});
  CHECK(e.to_vector()[5] == 2);
  CHECK(from_vector(std::vector<float>{5}, {1}).expand({2, 3}).to_vector() ==
        std::vector<double>(6, 5));
  CHECK(x.unsqueeze(0).shape() == Shape{1, 2, 3, 4});
  CHECK(x.unsqueeze(-1).shape() == Shape{2, 3, 4, 1});
  CHECK(x.unsqueeze(0).squeeze(0).shape() == Shape{2, 3, 4});
  CHECK(x.flatten(1).shape() == Shape{2, 12});
  CHECK(x.view({-1, 4}).shape() == Shape{6, 4});
  CHECK(scalar_tensor(2.0).view({1}).shape() == Shape{1});
  CHECK(scalar_tensor(2.0).reshape({1, 1}).to_vector() == std::vector<double>{2});
  CHECK(x.view({6, 4}).storage() == x.storage());
  // view of a transposed tensor is refused, reshape copies
  check_error([&] { x.transpose(0, 1).view({6, 4}); }, {"view", "reshape"});
  Tensor r = x.transpose(0, 1).reshape({6, 4});
  CHECK(r.storage() != x.storage());
  CHECK(r.to_vector()[4] == 12);
  // view of a narrowed dim that is still contiguous in chunks
  CHECK(x.narrow(0, 1, 1).view({3, 4}).to_vector()[0] == 12);
  // writes through a view are visible in the base
  x.narrow(2, 0, 1).fill_(-1);
  CHECK(x.to_vector()[4] == -1);
  CHECK(x.version() > 0);
}

TEST_CASE("view errors name the op and shapes") {
  Tensor x = zeros({2, 3});
  check_error([&] { x.view({4, 2}); }, {"view", "[4, 2]", "[2, 3]"});
  check_error([&] { x.reshape({-1, -1}); }, {"reshape", "-1"});
  check_error([&] { x.narrow(1, 2, 2); }, {"narrow", "[2, 3]"});
  check_error([&] { x.select(0, 5); }, {"select", "5"});
  check_error([&] { x.expand({4, 3}); }, {"expand", "[2, 3]", "[4, 3]"});
  check_error([&] { x.permute({0, 0}); }, {"permute", "repeated"});
  check_error([&] { x.size(3); }, {"dim 3 out of range"});
  check_error([] { Tensor u; u.shape(); }, {"undefined"});
  check_error([&] { x.data<double>(); }, {"float32"});
  check_error([] { broadcast_shapes("add", {2, 3}, {4}); }, {"add", "[2, 3]", "[4]"});
}

TEST_CASE("contiguous, channels-last and copies") {
  Generator g(3);
  Tensor x = randn({2, 3, 4, 5}, {}, &g);
  Tensor cl = x.contiguous_channels_last();
  CHECK(cl.is_channels_last());
  CHECK(!cl.is_contiguous());
  CHECK(is_dense(cl));
  CHECK(cl.strides() == Shape{60, 1, 15, 3});
  CHECK(cl.to_vector() == x.to_vector()); // same logical values
  CHECK(cl.clone().is_channels_last());
  CHECK(cl.contiguous().is_contiguous());
  CHECK(!is_dense(x.narrow(3, 0, 2)));
  Tensor y = zeros({2, 3, 4, 5});
  y.copy_(cl);
  CHECK(y.to_vector() == x.to_vector());
  Tensor b = zeros({3, 4});
  b.copy_(from_vector(std::vector<float>{1, 2, 3, 4}, {4})); // broadcast
  CHECK(b.to_vector()[5] == 2);
  check_error([&] { b.copy_(zeros({5})); }, {"copy_", "[5]", "[3, 4]"});
  // the reference and fast copy kernels agree on a permuted, converting copy
  Tensor p = x.permute({3, 1, 0, 2});
  set_cpu_kernels(CpuKernels::Reference);
  auto ref = p.to(kFloat64).contiguous().to_vector();
  set_cpu_kernels(CpuKernels::Fast);
  CHECK(p.to(kFloat64).contiguous().to_vector() == ref);
}

TEST_CASE("printing shows values, shape, dtype and device") {
  Tensor x = from_vector(std::vector<float>{1, 2, 3, 4}, {2, 2});
  std::string s = x.str();
  CHECK(s.find("[[1.0000, 2.0000],") != std::string::npos);
  CHECK(s.find("shape=[2, 2]") != std::string::npos);
  CHECK(s.find("dtype=float32") != std::string::npos);
  CHECK(s.find("device=cpu") != std::string::npos);
  std::ostringstream os;
  os << arange(3);
  CHECK(os.str().find("[0, 1, 2]") != std::string::npos);
  CHECK(arange(2000).str().find("...") != std::string::npos);
}

TEST_CASE("the caching allocator reuses freed blocks") {
  empty_cache();
  size_t before = memory_stats().in_use;
  { Tensor a = empty({1 << 20}); CHECK(memory_stats().in_use >= before + (4u << 20)); }
  CHECK(memory_stats().in_use == before);
  auto s1 = memory_stats();
  { Tensor b = empty({1 << 20}); }
  auto s2 = memory_stats();
  CHECK(s2.cache_hits == s1.cache_hits + 1);
  CHECK(s2.reserved == s1.reserved);
  CHECK(s2.peak >= 4u << 20);
  empty_cache();
  CHECK(memory_stats().reserved == memory_stats().in_use);
}

TEST_CASE("devices: parsing, and a clear error without a GPU") {
  CHECK(parse_device("cuda:1") == cuda_device(1));
  CHECK(parse_device("cpu") == kCPU);
  check_error([] { parse_device("gpu"); }, {"parse_device", "gpu"});
  if (!cuda::is_available()) {
    check_error([] { zeros({2}, cuda_device(0)); }, {"cuda:0", "no CUDA device"});
    check_error([] { zeros({2}).to(cuda_device(0)); }, {"cuda:0"});
  }
}

TEST_CASE("threads setting") {
  int n = get_num_threads();
  CHECK(n >= 1);
  set_num_threads(1);
  CHECK(get_num_threads() == 1);
  set_num_threads(n);
  check_error([] { set_num_threads(0); }, {"set_num_threads"});
}

} // TEST_SUITE
