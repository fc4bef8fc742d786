// tb/io.h — named tensors in order (TensorDict, the state_dict type) and safetensors files.
//
// safetensors layout: 8-byte little-endian header length N, N bytes of UTF-8 JSON
//   {"__metadata__": {"k": "v", ...},
//    "name": {"dtype": "F32", "shape": [2, 3], "data_offsets": [begin, end]}, ...}
// (padded with spaces so the data starts 8-byte aligned), then the byte buffer: every tensor
// row-major, little-endian, at [begin, end) relative to the buffer's start. The buffer is fully
// covered by the tensors, without holes or overlaps. Dtypes: F64 F32 F16 BF16 I64 I32 I8 U8 BOOL.
#pragma once

#include <tb/ops.h>

#include <map>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

namespace tb {

// Name -> Tensor in insertion order with unique names (a vector of pairs plus an index), so a
// model's state_dict keys keep PyTorch's order: `features.0.weight`, `bn1.running_mean`, ...
class TensorDict {
 public:
  using Item = std::pair<std::string, Tensor>;
  TensorDict() = default;
  TensorDict(std::initializer_list<Item> items);

  // Appends; tb::Error if `name` is already there.
  void insert(const std::string& name, const Tensor& t);
  // Replaces the value of an existing name in place, or appends a new one.
  void set(const std::string& name, const Tensor& t);
  bool contains(const std::string& name) const { return index_.count(name) != 0; }
  // The tensor named `name`; tb::Error naming the key when absent.
  const Tensor& at(const std::string& name) const;
  const Tensor& operator[](const std::string& name) const { return at(name); }
  // Pointer to the tensor, or nullptr when absent.
  const Tensor* find(const std::string& name) const;
  // Removes `name` (keeping the order of the others); false when it was absent.
  bool erase(const std::string& name);
  std::vector<std::string> keys() const;

  size_t size() const { return items_.size(); }
  bool empty() const { return items_.empty(); }
  const Item& item(size_t i) const { return items_.at(i); }
  std::vector<Item>::const_iterator begin() const { return items_.begin(); }
  std::vector<Item>::const_iterator end() const { return items_.end(); }

 private:
  std::vector<Item> items_;
  std::unordered_map<std::string, size_t> index_;
};
using StateDict = TensorDict;

// String -> string pairs of the header's "__metadata__" object.
using Metadata = std::map<std::string, std::string>;

// safetensors dtype names ("F32", "BF16", "BOOL", ...) and back (tb::Error on unknown names).
const char* safetensors_dtype_name(DType t);
DType safetensors_dtype_from_name(const std::string& name);

// Writes `tensors` (any device and layout; copied to CPU row-major) and `metadata` to `path`
// atomically: the bytes go to `path.tmp.<pid>`, are flushed and fsync'ed, then renamed over
// `path`. On any failure the temporary file is removed, `path` is left as it was, and tb::Error
// names the file and the failing step.
void save_safetensors(const std::string& path, const TensorDict& tensors,
                      const Metadata& metadata = {});

// A loaded file: tensors (CPU, contiguous) in header order, and the metadata.
struct SafetensorsFile {
  TensorDict tensors;
  Metadata metadata;
};

// Reads and validates a safetensors file. Everything in the header is checked before any tensor
// memory is allocated (file size, header length <= 100 MB, strict JSON with bounded depth, dtype
// names, shapes, int64 overflow of element/byte counts, offsets in range, matching shape*dtype
// size, no overlaps or holes, BOOL bytes 0/1); each problem raises tb::Error naming the file.
SafetensorsFile load_safetensors(const std::string& path);

} // namespace tb
