// A description of a blob, for people and scripts (`zcwrap inspect`).
#pragma once

#include <string>

#include <nlohmann/json_fwd.hpp>

namespace zcwrap {

/// Describes the blob at `path`, or the blob an actor config at `path` names,
/// after the checks every open makes (header, meta checksum, manifest); it
/// neither loads the skeletons nor reads the weights. The JSON form is documented in
/// docs/FORMAT.md ("inspect --json"). Throws zcwrap::Error.
nlohmann::json describe(const std::string& path);

/// Recomputes the checksum of every storage of the blob at `path` (or named
/// by the actor config at `path`) on `threads` threads (0: all cores).
/// Returns {"blob", "ok", "storages", "bytes", "seconds", "bad": [{"storage",
/// "tensor", "expected", "actual"}]}; "bad" lists every mismatch, each with
/// the first tensor that uses it. Throws zcwrap::Error when the blob cannot be
/// opened or fails its header, manifest or meta checks.
nlohmann::json verify(const std::string& path, unsigned threads = 0);

}  // namespace zcwrap
