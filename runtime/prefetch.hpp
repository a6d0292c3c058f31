// Warming a blob's data section before its weights are first read. Internal;
// torch-free.
#pragma once

#include <string>
#include <vector>

#include "blob_file.hpp"
#include "zcwrap/options.hpp"

namespace zcwrap::detail {

// Warms the data section's pages as `mode` asks (see Prefetch); returns one
// warning for each thing the system refused (huge pages, mlock).
std::vector<std::string> prefetch(const BlobFile& blob, Prefetch mode);

}  // namespace zcwrap::detail
