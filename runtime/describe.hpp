// describe()'s parts, for `zcwrap inspect`, which prints a tensor at a time
// from the manifest instead of describing every tensor first. Internal.
#pragma once

#include <string>

#include "format.hpp"
#include "pickle_scan.hpp"
#include "zcwrap/inspect.hpp"
#include "zcwrap/model_wrapper.hpp"

namespace zcwrap::detail {

// describe() of `wrapper`, opened from `path` (a blob, or an actor config
// naming one).
BlobInfo describe_blob(const ModelWrapper& wrapper, const std::string& path, const DescribeOptions& options);

// describe() of a blob's header and manifest, without reading the blob
// (pack's summary of what it wrote): `imports` holds what each model's
// pickle imports and the pipeline object's last, or is empty.
BlobInfo describe_layout(const format::Header& h, const format::Manifest& m, const std::string& blob_path,
                         const std::vector<std::vector<PickleGlobal>>& imports, const DescribeOptions& options);

// What describe() says of manifest tensor `t`.
TensorInfo tensor_info(const format::TensorEntry& t, const format::Manifest& m, const format::Header& h);

}  // namespace zcwrap::detail
