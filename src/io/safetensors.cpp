// safetensors files (format in include/tb/io.h) and TensorDict, the ordered name -> Tensor map.
//
// Loading treats the file as hostile: the header is parsed by a small strict JSON parser (objects,
// arrays, strings, integers; bounded depth; escapes and UTF-8 checked), every number is checked
// against the file before it is used, and tensor memory is allocated only once the whole header
// has been validated. Writing is atomic: temp file, fflush, fsync, rename.
#include <tb/io.h>

#include <algorithm>
#include <bit>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <limits>
#include <unordered_set>

#include <fcntl.h>
#include <unistd.h>

namespace tb {

static_assert(std::endian::native == std::endian::little,
              "safetensors I/O assumes a little-endian host");

// ---------------------------------------------------------------------------------------------
// TensorDict

TensorDict::TensorDict(std::initializer_list<Item> items) {
  for (auto& [name, t] : items) insert(name, t);
}

void TensorDict::insert(const std::string& name, const Tensor& t) {
  TB_CHECK(!contains(name), "TensorDict::insert: key '{}' is already present", name);
  index_[name] = items_.size();
  items_.emplace_back(name, t);
}

void TensorDict::set(const std::string& name, const Tensor& t) {
  auto it = index_.find(name);
  if (it == index_.end()) insert(name, t);
  else items_[it->second].second = t;
}

const Tensor& TensorDict::at(const std::string& name) const {
  auto it = index_.find(name);
  TB_CHECK(it != index_.end(), "TensorDict: no key '{}' (it has {} keys)", name, items_.size());
  return items_[it->second].second;
}

const Tensor* TensorDict::find(const std::string& name) const {
  auto it = index_.find(name);
  return it == index_.end() ? nullptr : &items_[it->second].second;
}

bool TensorDict::erase(const std::string& name) {
  auto it = index_.find(name);
  if (it == index_.end()) return false;
  items_.erase(items_.begin() + (std::ptrdiff_t)it->second);
  index_.clear();
  for (size_t i = 0; i < items_.size(); i++) index_[items_[i].first] = i;
  return true;
}

std::vector<std::string> TensorDict::keys() const {
  std::vector<std::string> k;
  for (auto& [name, t] : items_) k.push_back(name);
  return k;
}

// ---------------------------------------------------------------------------------------------
// Dtype names

const char* safetensors_dtype_name(DType t) {
  switch (t) {
    case kFloat64: return "F64";
    case kFloat32: return "F32";
    case kFloat16: return "F16";
    case kBFloat16: return "BF16";
    case kInt64: return "I64";
    case kInt32: return "I32";
    case kInt8: return "I8";
    case kUInt8: return "U8";
    case kBool: return "BOOL";
  }
  throw Error(fmt::format("safetensors: dtype {} has no safetensors name", (int)t));
}

static bool dtype_from_name(const std::string& n, DType& out) {
  static const std::pair<const char*, DType> table[] = {
      {"F64", kFloat64}, {"F32", kFloat32}, {"F16", kFloat16}, {"BF16", kBFloat16},
      {"I64", kInt64},   {"I32", kInt32},   {"I8", kInt8},     {"U8", kUInt8},
      {"BOOL", kBool}};
  for (auto& [name, t] : table)
    if (n == name) { out = t; return true; }
  return false;
}

DType safetensors_dtype_from_name(const std::string& name) {
  DType t;
  TB_CHECK(dtype_from_name(name, t),
           "safetensors: unsupported dtype '{}' (expected F64, F32, F16, BF16, I64, I32, I8, U8 "
           "or BOOL)", name);
  return t;
}

// ---------------------------------------------------------------------------------------------
// A strict JSON parser for the header: objects (key order kept, duplicates refused), arrays,
// strings and integers. Floats, true/false/null are not part of a safetensors header.

namespace {

constexpr int kMaxJsonDepth = 8;                         // a header nests 3 deep
constexpr uint64_t kMaxHeaderBytes = 100ull * 1000 * 1000; // as the reference implementation

struct JValue {
  enum Kind { Object, Array, String, Integer } kind = Object;
  std::string str;
  int64_t num = 0;
  std::vector<JValue> arr;
  // (key, value) members in file order. Not std::pair<std::string, JValue>: a pair of a type still
  // being defined is ill-formed, which clang rejects.
  struct Member;
  std::vector<Member> obj;
};
struct JValue::Member {
  std::string key;
  JValue value;
};

const char* kind_name(JValue::Kind k) {
  switch (k) {
    case JValue::Object: return "an object";
    case JValue::Array: return "an array";
    case JValue::String: return "a string";
    case JValue::Integer: return "an integer";
  }
  return "?";
}

class JsonParser {
 public:
  JsonParser(const std::string& file, const char* p, size_t n) : file_(file), s_(p), n_(n) {}

  JValue parse_document() {
    skip_ws();
    JValue v = parse_value(0);
    skip_ws();
    if (i_ != n_) fail("unexpected trailing characters");
    return v;
  }

 private:
  [[noreturn]] void fail(const std::string& what) const {
    throw Error(fmt::format("load_safetensors: '{}': invalid JSON header at byte {}: {}", file_,
                            i_, what));
  }
  void skip_ws() {
    while (i_ < n_ && (s_[i_] == ' ' || s_[i_] == '\t' || s_[i_] == '\n' || s_[i_] == '\r')) i_++;
  }
  void expect(char c) {
    if (i_ >= n_ || s_[i_] != c) fail(fmt::format("expected '{}'", c));
    i_++;
  }

  JValue parse_value(int depth) {
    if (depth > kMaxJsonDepth) fail(fmt::format("nesting deeper than {}", kMaxJsonDepth));
    if (i_ >= n_) fail("unexpected end of header");
    char c = s_[i_];
    if (c == '{') return parse_object(depth);
    if (c == '[') return parse_array(depth);
    if (c == '"') {
      JValue v;
      v.kind = JValue::String;
      v.str = parse_string();
      return v;
    }
    if (c == '-' || (c >= '0' && c <= '9')) return parse_integer();
    fail(fmt::format("unexpected character '{}' (only objects, arrays, strings and integers "
                     "belong in a safetensors header)", c));
  }

  JValue parse_object(int depth) {
    JValue v;
    v.kind = JValue::Object;
    expect('{');
    skip_ws();
    if (i_ < n_ && s_[i_] == '}') { i_++; return v; }
    std::unordered_set<std::string> seen; // a linear scan per key is quadratic: 10^6 keys hang
    while (true) {
      skip_ws();
      if (i_ >= n_ || s_[i_] != '"') fail("expected a string key");
      std::string key = parse_string();
      if (!seen.insert(key).second) fail(fmt::format("duplicate key '{}'", key));
      skip_ws();
      expect(':');
      skip_ws();
      v.obj.push_back({std::move(key), parse_value(depth + 1)});
      skip_ws();
      if (i_ < n_ && s_[i_] == ',') { i_++; continue; }
      expect('}');
      return v;
    }
  }

  JValue parse_array(int depth) {
    JValue v;
    v.kind = JValue::Array;
    expect('[');
    skip_ws();
    if (i_ < n_ && s_[i_] == ']') { i_++; return v; }
    while (true) {
      skip_ws();
      v.arr.push_back(parse_value(depth + 1));
      skip_ws();
      if (i_ < n_ && s_[i_] == ',') { i_++; continue; }
      expect(']');
      return v;
    }
  }

  JValue parse_integer() {
    JValue v;
    v.kind = JValue::Integer;
    bool neg = false;
    if (s_[i_] == '-') { neg = true; i_++; }
    if (i_ >= n_ || s_[i_] < '0' || s_[i_] > '9') fail("expected a digit");
    if (s_[i_] == '0' && i_ + 1 < n_ && s_[i_ + 1] >= '0' && s_[i_ + 1] <= '9')
      fail("leading zeros are not allowed");
    uint64_t mag = 0;
    const uint64_t limit = neg ? (uint64_t)std::numeric_limits<int64_t>::max() + 1
                               : (uint64_t)std::numeric_limits<int64_t>::max();
    while (i_ < n_ && s_[i_] >= '0' && s_[i_] <= '9') {
      uint64_t d = (uint64_t)(s_[i_] - '0');
      if (mag > (limit - d) / 10) fail("integer does not fit in int64");
      mag = mag * 10 + d;
      i_++;
    }
    if (i_ < n_ && (s_[i_] == '.' || s_[i_] == 'e' || s_[i_] == 'E'))
      fail("non-integer number (shapes and offsets are integers)");
    v.num = neg ? (int64_t)(0 - mag) : (int64_t)mag;
    return v;
  }

  unsigned hex4() {
    if (i_ + 4 > n_) fail("truncated \\u escape");
    unsigned u = 0;
    for (int k = 0; k < 4; k++) {
      char c = s_[i_++];
      u <<= 4;
      if (c >= '0' && c <= '9') u |= (unsigned)(c - '0');
      else if (c >= 'a' && c <= 'f') u |= (unsigned)(c - 'a' + 10);
      else if (c >= 'A' && c <= 'F') u |= (unsigned)(c - 'A' + 10);
      else fail("bad hex digit in \\u escape");
    }
    return u;
  }

  static void put_utf8(std::string& out, unsigned cp) {
    if (cp < 0x80) {
      out += (char)cp;
    } else if (cp < 0x800) {
      out += (char)(0xC0 | (cp >> 6));
      out += (char)(0x80 | (cp & 0x3F));
    } else if (cp < 0x10000) {
      out += (char)(0xE0 | (cp >> 12));
      out += (char)(0x80 | ((cp >> 6) & 0x3F));
      out += (char)(0x80 | (cp & 0x3F));
    } else {
      out += (char)(0xF0 | (cp >> 18));
      out += (char)(0x80 | ((cp >> 12) & 0x3F));
      out += (char)(0x80 | ((cp >> 6) & 0x3F));
      out += (char)(0x80 | (cp & 0x3F));
    }
  }

  // Length of the valid UTF-8 sequence starting at s_[i_] (non-ASCII), or 0.
  size_t utf8_len() const {
    auto b = [&](size_t k) { return (unsigned char)s_[i_ + k]; };
    unsigned char c = b(0);
    size_t len = c >= 0xF0 ? 4 : c >= 0xE0 ? 3 : c >= 0xC2 ? 2 : 0;
    if (len == 0 || c > 0xF4 || i_ + len > n_) return 0;
    for (size_t k = 1; k < len; k++)
      if ((b(k) & 0xC0) != 0x80) return 0;
    if (c == 0xE0 && b(1) < 0xA0) return 0;  // overlong
    if (c == 0xED && b(1) >= 0xA0) return 0; // surrogate
    if (c == 0xF0 && b(1) < 0x90) return 0;  // overlong
    if (c == 0xF4 && b(1) >= 0x90) return 0; // > U+10FFFF
    return len;
  }

  std::string parse_string() {
    expect('"');
    std::string out;
    while (true) {
      if (i_ >= n_) fail("unterminated string");
      unsigned char c = (unsigned char)s_[i_];
      if (c == '"') { i_++; return out; }
      if (c < 0x20) fail("unescaped control character in string");
      if (c == '\\') {
        i_++;
        if (i_ >= n_) fail("unterminated escape");
        char e = s_[i_++];
        switch (e) {
          case '"': out += '"'; break;
          case '\\': out += '\\'; break;
          case '/': out += '/'; break;
          case 'b': out += '\b'; break;
          case 'f': out += '\f'; break;
          case 'n': out += '\n'; break;
          case 'r': out += '\r'; break;
          case 't': out += '\t'; break;
          case 'u': {
            unsigned cp = hex4();
            if (cp >= 0xDC00 && cp <= 0xDFFF) fail("lone low surrogate in \\u escape");
            if (cp >= 0xD800 && cp <= 0xDBFF) {
              if (i_ + 2 > n_ || s_[i_] != '\\' || s_[i_ + 1] != 'u')
                fail("high surrogate not followed by a low surrogate");
              i_ += 2;
              unsigned lo = hex4();
              if (lo < 0xDC00 || lo > 0xDFFF) fail("high surrogate not followed by a low surrogate");
              cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
            }
            put_utf8(out, cp);
            break;
          }
          default: fail(fmt::format("unknown escape '\\{}'", e));
        }
      } else if (c < 0x80) {
        out += (char)c;
        i_++;
      } else {
        size_t len = utf8_len();
        if (len == 0) fail("invalid UTF-8 in string");
        out.append(s_ + i_, len);
        i_ += len;
      }
    }
  }

  const std::string& file_;
  const char* s_;
  size_t n_;
  size_t i_ = 0;
};

void json_escape(std::string& out, const std::string& s) {
  out += '"';
  for (unsigned char c : s) {
    switch (c) {
      case '"': out += "\\\""; break;
      case '\\': out += "\\\\"; break;
      case '\n': out += "\\n"; break;
      case '\r': out += "\\r"; break;
      case '\t': out += "\\t"; break;
      case '\b': out += "\\b"; break;
      case '\f': out += "\\f"; break;
      default:
        if (c < 0x20) out += fmt::format("\\u{:04x}", c);
        else out += (char)c;
    }
  }
  out += '"';
}

// RAII FILE* that closes on scope exit.
struct File {
  FILE* f = nullptr;
  ~File() { if (f) std::fclose(f); }
};

} // namespace

// ---------------------------------------------------------------------------------------------
// Save

void save_safetensors(const std::string& path, const TensorDict& tensors,
                      const Metadata& metadata) {
  // Gather CPU row-major copies first: failures here (undefined tensors) leave no file behind.
  struct Entry {
    const std::string* name;
    Tensor data;
    uint64_t begin, end;
  };
  std::vector<Entry> entries;
  uint64_t offset = 0;
  for (auto& [name, t] : tensors) {
    TB_CHECK(name != "__metadata__", "save_safetensors: '{}': '__metadata__' is reserved and "
             "cannot name a tensor", path);
    TB_CHECK(t.defined(), "save_safetensors: '{}': tensor '{}' is undefined", path, name);
    Tensor c = t.detach().cpu().contiguous();
    uint64_t nbytes = (uint64_t)c.numel() * c.element_size();
    entries.push_back({&name, c, offset, offset + nbytes});
    offset += nbytes;
  }

  std::string header = "{";
  if (!metadata.empty()) {
    header += "\"__metadata__\":{";
    bool first = true;
    for (auto& [k, v] : metadata) {
      if (!first) header += ',';
      first = false;
      json_escape(header, k);
      header += ':';
      json_escape(header, v);
    }
    header += '}';
    if (!entries.empty()) header += ',';
  }
  for (size_t i = 0; i < entries.size(); i++) {
    auto& e = entries[i];
    if (i) header += ',';
    json_escape(header, *e.name);
    header += fmt::format(":{{\"dtype\":\"{}\",\"shape\":[", safetensors_dtype_name(e.data.dtype()));
    for (int64_t d = 0; d < e.data.dim(); d++) header += fmt::format("{}{}", d ? "," : "", e.data.size(d));
    header += fmt::format("],\"data_offsets\":[{},{}]}}", e.begin, e.end);
  }
  header += '}';
  while ((8 + header.size()) % 8 != 0) header += ' '; // data 8-byte aligned, as the reference

  const std::string tmp = fmt::format("{}.tmp.{}", path, (long)::getpid());
  auto fail = [&](const char* step) {
    int err = errno;
    std::remove(tmp.c_str());
    throw Error(fmt::format("save_safetensors: '{}': {} failed: {}", path, step,
                            std::strerror(err)));
  };
  File file;
  file.f = std::fopen(tmp.c_str(), "wb");
  if (!file.f) {
    int err = errno;
    throw Error(fmt::format("save_safetensors: '{}': cannot create temporary file '{}': {}", path,
                            tmp, std::strerror(err)));
  }
  uint8_t len_le[8];
  uint64_t n = header.size();
  for (int k = 0; k < 8; k++) len_le[k] = (uint8_t)(n >> (8 * k));
  if (std::fwrite(len_le, 1, 8, file.f) != 8) fail("writing the header length");
  if (std::fwrite(header.data(), 1, header.size(), file.f) != header.size()) fail("writing the header");
  for (auto& e : entries) {
    size_t nb = (size_t)(e.end - e.begin);
    if (nb && std::fwrite(e.data.raw_data(), 1, nb, file.f) != nb) fail("writing tensor data");
  }
  if (std::fflush(file.f) != 0) fail("fflush");
  if (::fsync(::fileno(file.f)) != 0) fail("fsync");
  FILE* f = file.f;
  file.f = nullptr;
  if (std::fclose(f) != 0) fail("fclose");
  if (std::rename(tmp.c_str(), path.c_str()) != 0) fail("rename");
  // Make the rename itself durable (best effort: some filesystems refuse fsync on directories).
  std::string dir = path.find('/') == std::string::npos ? "." : path.substr(0, path.rfind('/') + 1);
  int dfd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY);
  if (dfd >= 0) {
    (void)::fsync(dfd);
    ::close(dfd);
  }
}

// ---------------------------------------------------------------------------------------------
// Load

SafetensorsFile load_safetensors(const std::string& path) {
  File file;
  file.f = std::fopen(path.c_str(), "rb");
  if (!file.f) {
    int err = errno;
    throw Error(fmt::format("load_safetensors: cannot open '{}': {}", path, std::strerror(err)));
  }
  TB_CHECK(::fseeko(file.f, 0, SEEK_END) == 0, "load_safetensors: '{}': cannot seek", path);
  const int64_t file_size = (int64_t)::ftello(file.f);
  TB_CHECK(file_size >= 0, "load_safetensors: '{}': cannot determine the file size", path);
  TB_CHECK(file_size >= 8, "load_safetensors: '{}': file is {} bytes, shorter than the 8-byte "
           "header length", path, file_size);
  std::rewind(file.f);
  uint8_t len_le[8];
  TB_CHECK(std::fread(len_le, 1, 8, file.f) == 8, "load_safetensors: '{}': cannot read the header "
           "length", path);
  uint64_t header_len = 0;
  for (int k = 0; k < 8; k++) header_len |= (uint64_t)len_le[k] << (8 * k);
  TB_CHECK(header_len <= kMaxHeaderBytes, "load_safetensors: '{}': header length {} is absurd "
           "(limit {} bytes)", path, header_len, kMaxHeaderBytes);
  TB_CHECK(header_len <= (uint64_t)(file_size - 8), "load_safetensors: '{}': header length {} is "
           "larger than the {} bytes after the length field", path, header_len, file_size - 8);
  TB_CHECK(header_len >= 2, "load_safetensors: '{}': header length {} is too small for a JSON "
           "object", path, header_len);
  std::string header(header_len, '\0');
  TB_CHECK(std::fread(header.data(), 1, header_len, file.f) == header_len,
           "load_safetensors: '{}': cannot read the {}-byte header", path, header_len);
  const int64_t data_size = file_size - 8 - (int64_t)header_len;

  JValue root = JsonParser(path, header.data(), header.size()).parse_document();
  TB_CHECK(root.kind == JValue::Object, "load_safetensors: '{}': header is {}, expected a JSON "
           "object", path, kind_name(root.kind));

  struct Info {
    const std::string* name;
    DType dtype;
    Shape shape;
    int64_t begin, end;
  };
  std::vector<Info> infos;
  SafetensorsFile out;
  for (auto& [name, v] : root.obj) {
    if (name == "__metadata__") {
      TB_CHECK(v.kind == JValue::Object, "load_safetensors: '{}': __metadata__ is {}, expected "
               "an object of strings", path, kind_name(v.kind));
      for (auto& [k, s] : v.obj) {
        TB_CHECK(s.kind == JValue::String, "load_safetensors: '{}': __metadata__ value of '{}' is "
                 "{}, expected a string", path, k, kind_name(s.kind));
        out.metadata[k] = s.str;
      }
      continue;
    }
    TB_CHECK(v.kind == JValue::Object, "load_safetensors: '{}': entry '{}' is {}, expected an "
             "object with dtype, shape and data_offsets", path, name, kind_name(v.kind));
    const JValue *dtype = nullptr, *shape = nullptr, *offsets = nullptr;
    for (auto& [k, f] : v.obj) {
      if (k == "dtype") dtype = &f;
      else if (k == "shape") shape = &f;
      else if (k == "data_offsets") offsets = &f;
      else throw Error(fmt::format("load_safetensors: '{}': tensor '{}' has unknown field '{}'",
                                   path, name, k));
    }
    TB_CHECK(dtype && shape && offsets, "load_safetensors: '{}': tensor '{}' lacks {}", path, name,
             !dtype ? "dtype" : !shape ? "shape" : "data_offsets");
    TB_CHECK(dtype->kind == JValue::String, "load_safetensors: '{}': tensor '{}': dtype is {}, "
             "expected a string", path, name, kind_name(dtype->kind));
    Info info{&name, kFloat32, {}, 0, 0};
    TB_CHECK(dtype_from_name(dtype->str, info.dtype), "load_safetensors: '{}': tensor '{}' has "
             "unsupported dtype '{}' (expected F64, F32, F16, BF16, I64, I32, I8, U8 or BOOL)",
             path, name, dtype->str);
    TB_CHECK(shape->kind == JValue::Array, "load_safetensors: '{}': tensor '{}': shape is {}, "
             "expected an array", path, name, kind_name(shape->kind));
    int64_t nbytes = (int64_t)dtype_size(info.dtype);
    for (auto& d : shape->arr) {
      TB_CHECK(d.kind == JValue::Integer && d.num >= 0, "load_safetensors: '{}': tensor '{}': "
               "shape entries must be non-negative integers", path, name);
      info.shape.push_back(d.num);
      TB_CHECK(!__builtin_mul_overflow(nbytes, d.num, &nbytes), "load_safetensors: '{}': tensor "
               "'{}': shape {} overflows int64 bytes", path, name, shape_str(info.shape));
    }
    TB_CHECK(offsets->kind == JValue::Array && offsets->arr.size() == 2 &&
                 offsets->arr[0].kind == JValue::Integer && offsets->arr[1].kind == JValue::Integer,
             "load_safetensors: '{}': tensor '{}': data_offsets must be [begin, end] integers",
             path, name);
    info.begin = offsets->arr[0].num;
    info.end = offsets->arr[1].num;
    TB_CHECK(0 <= info.begin && info.begin <= info.end && info.end <= data_size,
             "load_safetensors: '{}': tensor '{}': data_offsets [{}, {}] outside the {}-byte data "
             "buffer", path, name, info.begin, info.end, data_size);
    TB_CHECK(info.end - info.begin == nbytes, "load_safetensors: '{}': tensor '{}': data_offsets "
             "[{}, {}] span {} bytes, but {} {} needs {}", path, name, info.begin, info.end,
             info.end - info.begin, safetensors_dtype_name(info.dtype), shape_str(info.shape),
             nbytes);
    infos.push_back(std::move(info));
  }

  // The tensors must tile the buffer exactly: no overlaps, no holes, nothing left over.
  std::vector<const Info*> by_offset;
  for (auto& i : infos) by_offset.push_back(&i);
  std::stable_sort(by_offset.begin(), by_offset.end(), [](const Info* a, const Info* b) {
    return a->begin != b->begin ? a->begin < b->begin : a->end < b->end;
  });
  int64_t covered = 0;
  const Info* prev = nullptr;
  for (const Info* i : by_offset) {
    TB_CHECK(i->begin >= covered, "load_safetensors: '{}': tensors '{}' [{}, {}] and '{}' [{}, {}] "
             "overlap", path, *prev->name, prev->begin, prev->end, *i->name, i->begin, i->end);
    TB_CHECK(i->begin == covered, "load_safetensors: '{}': bytes [{}, {}) before tensor '{}' "
             "belong to no tensor", path, covered, i->begin, *i->name);
    covered = i->end;
    prev = i;
  }
  TB_CHECK(covered == data_size, "load_safetensors: '{}': data buffer has {} bytes but the tensors "
           "cover {}", path, data_size, covered);

  // Everything checked: allocate and read.
  for (auto& info : infos) {
    Tensor t = empty(info.shape, TensorOptions(info.dtype));
    size_t nb = (size_t)(info.end - info.begin);
    if (nb) {
      TB_CHECK(::fseeko(file.f, (off_t)(8 + header_len + (uint64_t)info.begin), SEEK_SET) == 0 &&
                   std::fread(t.raw_data(), 1, nb, file.f) == nb,
               "load_safetensors: '{}': cannot read the data of tensor '{}'", path, *info.name);
    }
    if (info.dtype == kBool) {
      const uint8_t* b = static_cast<const uint8_t*>(t.raw_data());
      for (size_t k = 0; k < nb; k++)
        TB_CHECK(b[k] <= 1, "load_safetensors: '{}': BOOL tensor '{}' holds byte {} (expected 0 "
                 "or 1)", path, *info.name, b[k]);
    }
    out.tensors.insert(*info.name, t);
  }
  return out;
}

} // namespace tb
