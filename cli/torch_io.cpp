#include "torch_io.hpp"

#include <algorithm>
#include <cstring>
#include <memory>
#include <string_view>
#include <unordered_map>

#include <caffe2/serialize/inline_container.h>
#include <torch/csrc/jit/serialization/unpickler.h>

#include "input_check.hpp"
#include "torch_compat.hpp"
#include "torch_util.hpp"
#include "messages.hpp"
#include "zcwrap/error.hpp"
#include "file_util.hpp"
#include "format.hpp"

namespace zcwrap::cli {

std::string torch_message(const std::exception& e) { return detail::message_line(e, detail::MessageLine::kLast); }

std::vector<c10::IValue> as_arguments(const c10::IValue& value) {
  if (!value.isTuple()) return {value};
  const auto& elements = value.toTupleRef().elements();
  return std::vector<c10::IValue>(elements.begin(), elements.end());
}

namespace {

// The bytes of a file already read, as PyTorchStreamReader reads them.
class BytesReader final : public caffe2::serialize::ReadAdapterInterface {
 public:
  explicit BytesReader(const std::string& bytes) : bytes_(bytes) {}
  size_t size() const override { return bytes_.size(); }
  size_t read(uint64_t pos, void* buf, size_t n, const char* /*what*/) const override {
    if (pos >= bytes_.size()) return 0;
    n = std::min<uint64_t>(n, bytes_.size() - pos);
    std::memcpy(buf, bytes_.data() + pos, n);
    return n;
  }

 private:
  const std::string& bytes_;
};

// Everything LibTorch's unpickler does not check about a tensor it rebuilds:
// that its storage is no longer than the record it was read from, and that
// its sizes, strides and offset stay inside that storage. Throws
// Error(kInput) naming `path`.
void check_tensor(const at::Tensor& t, const std::unordered_map<const void*, size_t>& records,
                  const std::string& path) {
  auto refuse = [&](const std::string& what) { throw Error(ErrorCode::kInput, path + ": " + what); };
  if (t.layout() != at::kStrided) refuse("holds a tensor whose layout is not strided");
  if (t.is_quantized()) refuse("holds a quantized tensor; run takes unquantized inputs");
  const std::string dtype = detail::dtype_name(t.scalar_type());
  if (dtype.empty()) refuse(std::string("holds a tensor of dtype ") + c10::toString(t.scalar_type()));
  const size_t nbytes = t.storage().nbytes();
  if (nbytes > 0) {
    auto it = records.find(t.storage().data());
    if (it == records.end() || nbytes > it->second) {
      refuse("holds a storage of " + std::to_string(nbytes) + " bytes whose record holds " +
             std::to_string(it == records.end() ? 0 : it->second));
    }
  }
  const format::Extent e = format::strided_extent(t.sizes().vec(), t.strides().vec(), t.storage_offset(),
                                                  t.element_size());
  if (e.status != format::Extent::Status::kOk || e.end_bytes > nbytes) {
    refuse("holds a " + dtype + " tensor of sizes " + c10::str(t.sizes()) + ", strides " + c10::str(t.strides()) +
           " and offset " + std::to_string(t.storage_offset()) + " that reaches outside its storage of " +
           std::to_string(nbytes) + " bytes");
  }
}

}  // namespace

std::vector<c10::IValue> read_inputs(const std::string& path, const c10::Device& device) {
  const std::string bytes = detail::read_file(path);
  c10::IValue value;
  try {
    caffe2::serialize::PyTorchStreamReader reader(std::make_shared<BytesReader>(bytes));
    const auto [pickle, pickle_size] = reader.getRecord("data.pkl");
    const std::string_view data(static_cast<const char*>(pickle.get()), pickle_size);
    if (std::string problem = check_input_pickle(data); !problem.empty()) {
      throw Error(ErrorCode::kInput, path + ": not a tensor file zcwrap reads: " + problem);
    }
    size_t read = 0;
    auto read_pickle = [&](char* out, size_t n) {
      n = std::min(n, data.size() - read);
      std::memcpy(out, data.data() + read, n);
      read += n;
      return n;
    };
    // The byte size of each record, by the address LibTorch puts its tensor at.
    std::unordered_map<const void*, size_t> records;
    auto read_record = [&](const std::string& key) {
      auto [ptr, size] = reader.getRecord("data/" + key);
      records[ptr.get()] = size;
      return std::move(ptr);
    };
    torch::jit::Unpickler unpickler(read_pickle, nullptr, nullptr, read_record, c10::nullopt);
    unpickler.set_version(reader.version());
    {
      // LibTorch 2.10+ warns of the quantized dtypes' deprecation when it
      // rebuilds one, which check_tensor then refuses anyway.
      const detail::QuietWarnings quiet;
      value = unpickler.parse_ivalue();
    }
    std::vector<c10::IValue> args = as_arguments(value);
    for (c10::IValue& v : args) {
      if (!v.isTensor()) {
        throw Error(ErrorCode::kInput, path + ": holds a " + v.tagKind() + "; expected a tensor or a tuple of tensors");
      }
      check_tensor(v.toTensor(), records, path);
    }
    for (c10::IValue& v : args) v = v.toTensor().to(device);
    return args;
  } catch (const Error&) {
    throw;
  } catch (const std::exception& e) {
    throw Error(ErrorCode::kInput, path + ": not a tensor file written by torch.save (" + torch_message(e) + ")");
  }
}

void check_input_file(const std::string& path) { read_inputs(path, c10::Device(c10::kCPU)); }

}  // namespace zcwrap::cli
