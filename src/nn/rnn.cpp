// Recurrent layers: nn.LSTM (PyTorch's semantics, gate order i, f, g, o), as a composition of
// the differentiable ops, so autograd gives its backward.
//
// Shapes: T steps, N batch, I input size, H hidden size, L layers. Per layer:
//   GX = X W_ih^T + b_ih                       [T, N, 4H]   (one matmul for all steps)
//   for t: G = GX_t + h W_hh^T + b_hh          [N, 4H]
//          i, f, o = σ(G_i), σ(G_f), σ(G_o);  g = tanh(G_g)
//          c = f ⊙ c + i ⊙ g;  h = o ⊙ tanh(c)
// and the layer's output is the stack of its h over t.
#include <tb/nn.h>

#include <cmath>

namespace tb::nn {

namespace {

// x cut into `parts` equal pieces along `dim`, recorded as ONE autograd node whose backward is a
// single cat of the pieces' gradients. (A narrow() per piece would give each piece a backward that
// allocates a zero tensor of x's full shape: T of them per layer for the precomputed input
// projection, which made backward quadratic in the sequence length.)
std::vector<Tensor> split_equal(const Tensor& x, int64_t dim, int64_t parts) {
  int64_t size = x.size(dim) / parts;
  std::vector<Tensor> out;
  {
    no_grad ng;
    for (int64_t p = 0; p < parts; p++) out.push_back(x.narrow(dim, p * size, size));
  }
  if (auto node = make_node("lstm_split", {x})) {
    node->backward = [dim](const std::vector<Tensor>& g) { return std::vector<Tensor>{cat(g, dim)}; };
    attach_outputs(node, out);
  }
  return out;
}

} // namespace

LSTM::LSTM(const LSTMOptions& c) : num_layers_(c.num_layers), batch_first_(c.batch_first) {
  TB_CHECK(c.input_size > 0 && c.hidden_size > 0 && c.num_layers > 0,
           "LSTM: input_size, hidden_size and num_layers must be positive, got {}, {}, {}",
           c.input_size, c.hidden_size, c.num_layers);
  TB_CHECK(!c.bidirectional, "LSTM: bidirectional = true is not supported (unidirectional only)");
  TB_CHECK(c.dropout == 0.0, "LSTM: dropout between layers is not supported (got dropout = {}); "
           "put a Dropout module after the LSTM instead", c.dropout);
  TB_CHECK(c.proj_size == 0, "LSTM: proj_size is not supported (got {})", c.proj_size);
  TensorOptions o = c.tensor;
  o.requires_grad = false;
  int64_t H = c.hidden_size;
  double bound = 1.0 / std::sqrt((double)H); // PyTorch's RNNBase.reset_parameters
  for (int64_t k = 0; k < c.num_layers; k++) {
    int64_t in = k == 0 ? c.input_size : H;
    Tensor w_ih = empty({4 * H, in}, o), w_hh = empty({4 * H, H}, o);
    uniform_(w_ih, -bound, bound);
    uniform_(w_hh, -bound, bound);
    register_parameter(fmt::format("weight_ih_l{}", k), w_ih);
    register_parameter(fmt::format("weight_hh_l{}", k), w_hh);
    if (c.bias) {
      Tensor b_ih = empty({4 * H}, o), b_hh = empty({4 * H}, o);
      uniform_(b_ih, -bound, bound);
      uniform_(b_hh, -bound, bound);
      register_parameter(fmt::format("bias_ih_l{}", k), b_ih);
      register_parameter(fmt::format("bias_hh_l{}", k), b_hh);
    }
  }
}

bool check_lstm_input(const char* who, const Tensor& x, const Tensor& h0, const Tensor& c0,
                      int64_t input_size, int64_t hidden_size, int64_t num_layers,
                      bool batch_first) {
  check_defined(who, x, "input");
  TB_CHECK(x.dim() == 2 || x.dim() == 3,
           "{}: expected a 3-D input {} or an unbatched 2-D input [T, {}], got {}", who,
           batch_first ? fmt::format("[N, T, {}] (batch_first)", input_size)
                       : fmt::format("[T, N, {}]", input_size),
           input_size, shape_str(x.shape()));
  TB_CHECK(x.size(-1) == input_size, "{}: expected input_size {} in the last dim, got input {}",
           who, input_size, shape_str(x.shape()));
  check_floating(who, x);
  bool batched = x.dim() == 3;
  TB_CHECK(x.size(batched && batch_first ? 1 : 0) > 0,
           "{}: expected at least one time step, got input {}", who, shape_str(x.shape()));
  TB_CHECK(h0.defined() == c0.defined(), "{}: give both h0 and c0 or neither", who);
  if (h0.defined()) {
    int64_t n = batched ? x.size(batch_first ? 0 : 1) : 0;
    Shape want = batched ? Shape{num_layers, n, hidden_size} : Shape{num_layers, hidden_size};
    const char* layout = batched ? "[num_layers, N, hidden_size]" : "[num_layers, hidden_size]";
    TB_CHECK(h0.shape() == want, "{}: expected h0 of shape {} ({}), got {}", who, shape_str(want),
             layout, shape_str(h0.shape()));
    TB_CHECK(c0.shape() == want, "{}: expected c0 of shape {} ({}), got {}", who, shape_str(want),
             layout, shape_str(c0.shape()));
    TB_CHECK(h0.dtype() == x.dtype() && c0.dtype() == x.dtype(),
             "{}: h0 ({}) and c0 ({}) must have the input's dtype {}", who, h0.dtype(), c0.dtype(),
             x.dtype());
  }
  return batched;
}

Tensor LSTM::forward(const Tensor& x) { return forward_with_state(x).output; }

LSTMResult LSTM::forward_with_state(const Tensor& x_in, const Tensor& h0, const Tensor& c0) {
  int64_t H = hidden_size(), L = num_layers_;
  bool batched = check_lstm_input("LSTM", x_in, h0, c0, input_size(), H, L, batch_first_);
  Tensor w0 = get("weight_ih_l0");
  TB_CHECK(x_in.dtype() == w0.dtype() && x_in.device() == w0.device(),
           "LSTM: input is {} on {}, but the weights are {} on {}", x_in.dtype(), x_in.device(),
           w0.dtype(), w0.device());
  // Work in [T, N, F].
  Tensor x = batched ? (batch_first_ ? x_in.transpose(0, 1) : x_in) : x_in.unsqueeze(1);
  int64_t T = x.size(0), N = x.size(1);
  Tensor h_init = h0, c_init = c0;
  if (h_init.defined() && !batched) h_init = h_init.unsqueeze(1), c_init = c_init.unsqueeze(1);

  std::vector<Tensor> h_last, c_last;
  for (int64_t k = 0; k < L; k++) {
    Tensor w_ih = get(fmt::format("weight_ih_l{}", k)), w_hh = get(fmt::format("weight_hh_l{}", k));
    Tensor b_ih = find(fmt::format("bias_ih_l{}", k)), b_hh = find(fmt::format("bias_hh_l{}", k));
    Tensor gx = linear(x, w_ih, b_ih); // [T, N, 4H]
    Tensor h, c;
    if (h_init.defined()) {
      h = h_init.select(0, k), c = c_init.select(0, k);
    } else {
      h = zeros({N, H}, TensorOptions(x.dtype(), x.device()));
      c = h;
    }
    std::vector<Tensor> gx_t = split_equal(gx, 0, T); // T x [1, N, 4H]
    std::vector<Tensor> hs;
    hs.reserve(T);
    for (int64_t t = 0; t < T; t++) {
      Tensor g = add(gx_t[t].squeeze(0), linear(h, w_hh, b_hh)); // [N, 4H]
      std::vector<Tensor> gates = split_equal(g, 1, 4);           // i, f, g, o: [N, H] each
      Tensor i = sigmoid(gates[0]), f = sigmoid(gates[1]), gg = tanh(gates[2]),
             o = sigmoid(gates[3]);
      c = add(mul(f, c), mul(i, gg));
      h = mul(o, tanh(c));
      hs.push_back(h);
    }
    x = stack(hs, 0); // [T, N, H]
    h_last.push_back(h);
    c_last.push_back(c);
  }
  return lstm_result(x, h_last, c_last, batched, batch_first_);
}

LSTMResult lstm_result(const Tensor& x, const std::vector<Tensor>& h_last,
                       const std::vector<Tensor>& c_last, bool batched, bool batch_first) {
  LSTMResult r;
  r.h_n = stack(h_last, 0), r.c_n = stack(c_last, 0);
  if (!batched) {
    r.output = x.squeeze(1);
    r.h_n = r.h_n.squeeze(1), r.c_n = r.c_n.squeeze(1);
  } else {
    r.output = batch_first ? x.transpose(0, 1) : x;
  }
  return r;
}

std::string LSTM::extra_repr() const {
  std::string s = fmt::format("{}, {}", input_size(), hidden_size());
  if (num_layers_ != 1) s += fmt::format(", num_layers={}", num_layers_);
  if (!has_bias()) s += ", bias=False";
  if (batch_first_) s += ", batch_first=True";
  return s;
}

} // namespace tb::nn
