// describe()'s parts, for `zcwrap inspect`'s table, which prints a tensor at a
// time instead of building the JSON of every tensor first. Internal.
#pragma once

#include <cstdint>
#include <string>

#include <nlohmann/json_fwd.hpp>

#include "blob_file.hpp"
#include "format.hpp"
#include "zcwrap/model_wrapper.hpp"

namespace zcwrap::detail {

// describe()'s JSON for `wrapper`, opened from `path` (a blob, or an actor
// config naming one); with `with_tensors` false, each model's "tensors" is
// left out (everything else, counts included, is there).
nlohmann::json describe_blob(const ModelWrapper& wrapper, const std::string& path, bool with_tensors);

// A tensor's bytes (numel x element size) and its absolute offset in the file.
struct TensorPlace {
  uint64_t bytes = 0;
  uint64_t offset = 0;
};
TensorPlace tensor_place(const format::TensorEntry& t, const format::Manifest& m, const format::Header& h);

}  // namespace zcwrap::detail
