// Flags: CLI11's parse with messages that name the flag and what it accepts, and the checks
// (validators) the examples share.
#include <tb/experiment.h>
#include <tb/cuda.h>

#include <iostream>

namespace tb::experiment {

namespace {

// --help as "  --epochs INT:>=1    epochs to train (default 3)": the default after the text
// (CLI11 2.1 glues "=3" to the type, which reads badly after ">=1").
struct HelpFormatter : CLI::Formatter {
  std::string make_option_opts(const CLI::Option* opt) const override {
    return opt->get_type_size() == 0 ? "" : " " + opt->get_type_name();
  }
  std::string make_option_desc(const CLI::Option* opt) const override {
    std::string desc = opt->get_description();
    if (opt->get_type_size() != 0 && !opt->get_default_str().empty())
      desc += " (default " + opt->get_default_str() + ")";
    return desc;
  }
};

// The option whose "--name" occurs in `msg` as a whole word (the longest such name), or null.
const CLI::Option* option_named_in(const CLI::App& app, const std::string& msg) {
  const CLI::Option* best = nullptr;
  size_t best_len = 0;
  for (const CLI::Option* opt : app.get_options()) {
    for (const std::string& name : opt->get_lnames()) {
      std::string flag = "--" + name;
      for (size_t at = msg.find(flag); at != std::string::npos; at = msg.find(flag, at + 1)) {
        size_t end = at + flag.size();
        bool whole = end == msg.size() || !(std::isalnum((unsigned char)msg[end]) ||
                                            msg[end] == '-' || msg[end] == '_');
        if (whole && flag.size() > best_len) best = opt, best_len = flag.size();
      }
    }
  }
  return best;
}

// CLI11's message made to name the flag and what it accepts. Our checks already say "got 'x',
// accepts ..."; CLI11's own errors (a missing value, a value that does not convert) get the
// option's type and checks added. An unknown flag is named by CLI11's message.
std::string flag_message(const CLI::App& app, const CLI::ParseError& e) {
  std::string msg = e.what();
  const CLI::Option* opt = option_named_in(app, msg);
  if (opt && dynamic_cast<const CLI::ArgumentMismatch*>(&e))
    msg = fmt::format("{}: missing value; accepts {}", opt->get_name(), opt->get_type_name());
  else if (opt && !dynamic_cast<const CLI::ValidationError*>(&e))
    msg += fmt::format("; {} accepts {}", opt->get_name(), opt->get_type_name());
  return msg + " (see --help)";
}

} // namespace

std::optional<int> parse_flags(CLI::App& app, int argc, const char* const* argv) {
  app.formatter(std::make_shared<HelpFormatter>());
  for (CLI::Option* opt : app.get_options()) // the values before parsing are the defaults
    if (opt->get_default_str().empty()) opt->capture_default_str();
  try {
    app.parse(argc, argv);
    return std::nullopt;
  } catch (const CLI::Success& e) { // --help
    return app.exit(e);
  } catch (const CLI::ParseError& e) {
    std::cerr << app.get_name() << ": " << flag_message(app, e) << "\n";
    return 2;
  }
}

CLI::Validator accepts(std::string what, std::string short_desc,
                       std::function<bool(const std::string&)> ok) {
  return CLI::Validator(
      [what, ok](std::string& s) {
        return ok(s) ? std::string() : fmt::format("got '{}', accepts {}", s, what);
      },
      short_desc);
}

CLI::Validator greater_than(double lo) {
  return accepts(fmt::format("a number > {}", lo), fmt::format(">{}", lo),
                 [lo](const std::string& s) {
                   std::optional<double> v = parse_number<double>(s);
                   return v && *v > lo;
                 });
}

CLI::Validator one_of(const std::vector<std::string>& names) {
  return accepts(fmt::format("one of {}", fmt::join(names, ", ")),
                 fmt::format("{}", fmt::join(names, "|")), [names](const std::string& s) {
                   return std::find(names.begin(), names.end(), s) != names.end();
                 });
}

CLI::Validator device_name() {
  return CLI::Validator(
      [](std::string& s) -> std::string {
        Device d;
        try {
          d = parse_device(s);
        } catch (const Error&) {
          return fmt::format("got '{}', accepts cpu, cuda or cuda:N", s);
        }
        if (d.is_cuda() && !cuda::is_built())
          return fmt::format("got '{}', but this build has no CUDA support (meson -Dcuda=enabled); "
                             "accepts cpu", s);
        if (d.is_cuda() && !cuda::is_available())
          return fmt::format("got '{}', but no CUDA GPU is available on this machine; "
                             "accepts cpu", s);
        return "";
      },
      "cpu|cuda[:N]");
}

void check_batch_size(int64_t batch_size, int64_t dataset_size) {
  TB_CHECK(batch_size <= dataset_size, "--batch-size {} is larger than the training set ({} "
           "images); accepts 1 to {}", batch_size, dataset_size, dataset_size);
}

} // namespace tb::experiment
