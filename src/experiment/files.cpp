// Files: atomic writes, the output folder check, and the plot drawn by a Python script.
#include <tb/experiment.h>

#include <cerrno>
#include <cstring>
#include <fcntl.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

namespace fs = std::filesystem;

namespace tb::experiment {

void write_file_atomic(const fs::path& path, std::string_view bytes) {
  fs::path tmp = path;
  tmp += fmt::format(".tmp.{}", (long)::getpid());
  std::FILE* f = std::fopen(tmp.c_str(), "wb");
  auto fail = [&](const char* step) {
    int err = errno;
    if (f) std::fclose(f);
    std::remove(tmp.c_str());
    throw Error(fmt::format("write_file_atomic: '{}': {} failed: {}", path.string(), step,
                            std::strerror(err)));
  };
  if (!f) fail("creating the temporary file");
  if (std::fwrite(bytes.data(), 1, bytes.size(), f) != bytes.size()) fail("write");
  if (std::fflush(f) != 0) fail("fflush");
  if (::fsync(::fileno(f)) != 0) fail("fsync");
  int closed = std::fclose(f);
  f = nullptr;
  if (closed != 0) fail("fclose");
  if (std::rename(tmp.c_str(), path.c_str()) != 0) fail("rename");
  // Make the rename itself durable (best effort: some file systems refuse fsync on folders).
  fs::path dir = path.parent_path().empty() ? fs::path(".") : path.parent_path();
  int dfd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY);
  if (dfd >= 0) {
    (void)::fsync(dfd);
    ::close(dfd);
  }
}

void prepare_output_dir(const fs::path& dir) {
  std::error_code ec;
  fs::create_directories(dir, ec);
  TB_CHECK(!ec, "output folder '{}' cannot be created: {}", dir.string(), ec.message());
  fs::path probe = dir / ".write_test";
  try {
    write_file_atomic(probe, "ok\n");
  } catch (const Error& e) {
    throw Error(fmt::format("output folder '{}' is not writable ({})", dir.string(), e.what()));
  }
  fs::remove(probe, ec);
}

bool plot_metrics(const fs::path& script, const fs::path& metrics_json, const fs::path& png) {
  std::string python = fs::exists("/usr/bin/python3") ? "/usr/bin/python3" : "python3";
  std::vector<std::string> args = {python, script.string(), metrics_json.string(), png.string()};
  std::vector<char*> argv;
  for (auto& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);
  posix_spawn_file_actions_t quiet; // the script's output and errors go to /dev/null
  posix_spawn_file_actions_init(&quiet);
  posix_spawn_file_actions_addopen(&quiet, 1, "/dev/null", O_WRONLY, 0);
  posix_spawn_file_actions_adddup2(&quiet, 1, 2);
  pid_t pid = 0;
  int rc = posix_spawnp(&pid, argv[0], &quiet, nullptr, argv.data(), environ);
  posix_spawn_file_actions_destroy(&quiet);
  int status = 0;
  if (rc != 0 || ::waitpid(pid, &status, 0) != pid) return false;
  return WIFEXITED(status) && WEXITSTATUS(status) == 0;
}

} // namespace tb::experiment
