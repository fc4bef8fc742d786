// Progress: a bar redrawn in place on a terminal, plain lines every 10% in a log file.
#include <tb/experiment.h>

#include <unistd.h>

namespace tb::experiment {

Progress::Progress(ProgressOptions options)
    : o_(std::move(options)), tty_(o_.tty.value_or(::isatty(::fileno(o_.out)) != 0)),
      start_(std::chrono::steady_clock::now()) {}

double Progress::seconds() const {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
}

void Progress::update(int64_t done, const Meter& m) {
  double secs = seconds();
  double ips = (double)m.seen / std::max(secs, 1e-9);
  double eta = done > 0 ? secs / (double)done * (double)(o_.total - done) : 0;
  int64_t total = std::max<int64_t>(o_.total, 1);
  std::string figures = fmt::format("{}/{} loss {:.4f} acc {:.2f}% {:.0f} img/s eta {:.0f}s", done,
                                    o_.total, m.loss(), 100 * m.accuracy(), ips, eta);
  if (tty_) {
    int width = 30, filled = (int)(width * std::min(done, total) / total);
    fmt::print(o_.out, "\r{} [{}{}] {} ", o_.label, std::string(filled, '#'),
               std::string(width - filled, '.'), figures);
    std::fflush(o_.out);
  } else if (done * 10 / total != last_tenth_ || done == o_.total) {
    last_tenth_ = done * 10 / total;
    fmt::print(o_.out, "{} batch {}\n", o_.label, figures);
  }
}

void Progress::finish() {
  if (tty_) fmt::print(o_.out, "\n");
}

} // namespace tb::experiment
