// AOTInductor on a LibTorch without it (Debian's 1.13): every entry point
// refuses with one line saying what to use instead.
#include "aoti.hpp"

#include "zcwrap/error.hpp"
#include "zcwrap/version.hpp"

namespace zcwrap::detail {
namespace {

Error unsupported(const std::string& what) {
  return Error(ErrorCode::kBadModel, what + ": an AOTInductor package; this zcwrap is built against libtorch " +
                                         kLibTorchVersion +
                                         ", which has no AOTInductor: use a zcwrap built against torch 2.6 or later");
}

}  // namespace

bool aoti_supported() { return false; }

AotiPackage read_aoti_package(const std::shared_ptr<const ModelSource>& source, const std::string&) {
  throw unsupported(source->path);
}

struct AotiModel::Impl {};

AotiModel::AotiModel(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
AotiModel::~AotiModel() = default;

std::shared_ptr<AotiModel> AotiModel::load(const BlobFile& blob, size_t index, std::vector<at::Tensor>,
                                           const c10::Device&) {
  throw unsupported(blob.path() + ": model '" + blob.manifest().models[index].name + "'");
}

std::vector<at::Tensor> AotiModel::run(const std::vector<at::Tensor>&) const { return {}; }
const std::string& AotiModel::library_path() const {
  static const std::string none;
  return none;
}
const std::vector<at::Tensor>& AotiModel::constants() const {
  static const std::vector<at::Tensor> none;
  return none;
}
size_t AotiModel::input_count() const { return 0; }
size_t AotiModel::output_count() const { return 0; }
const std::string& AotiModel::in_spec() const { return library_path(); }
const std::string& AotiModel::out_spec() const { return library_path(); }

c10::IValue run_aoti(const AotiModel&, const std::string& name, std::vector<c10::IValue>) {
  throw unsupported("model '" + name + "'");
}

void write_aoti_package(const BlobFile& blob, size_t index, const std::string&) {
  throw unsupported(blob.path() + ": model '" + blob.manifest().models[index].name + "'");
}

}  // namespace zcwrap::detail
