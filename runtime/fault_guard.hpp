// A clear last word for a worker that writes to a read-only weight. Internal.
//
// Shared weights are mapped PROT_READ, so an in-place write faults. Without
// help the worker dies with a bare "Segmentation fault"; with a mapping
// registered here, a SIGSEGV inside it first prints one line saying what
// happened and what to do, then the process dies as it would have. The same
// for SIGBUS, a read past the end of a blob file truncated while mapped.
#pragma once

#include <cstddef>
#include <string>

namespace zcwrap::detail {

// Registers [base, base + size) as the read-only mapping of `path`. Returns a
// handle for unregister_readonly_mapping(), or -1 when all slots are taken
// (the mapping then just faults without the message).
int register_readonly_mapping(const void* base, size_t size, const std::string& path);
void unregister_readonly_mapping(int handle);

// How the message after a write names the copy-on-write option, in the
// caller's language: "UnwrapOptions::copy_on_write" (C++) unless a front end
// (the Python package: "unwrap(copy_on_write=True)") sets its own. Call it
// before any blob is mapped; it is read by the signal handler.
void set_copy_on_write_hint(const std::string& hint);

}  // namespace zcwrap::detail
