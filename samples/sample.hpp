// What the two halves of zcwrap-sample agree on: how the driver starts a
// worker and how the worker answers.
//
// The driver runs `/proc/self/exe worker ARGS...` with one end of a
// socketpair as fd kReportFd. The worker loads its model, serves its
// batches, writes one JSON line to that fd (a report, or {"ok": false,
// "error": ...}), and then keeps its modules alive, reading the fd until the
// driver closes it: the driver reads the worker's memory in between.
#pragma once

namespace sample {

/// The worker's end of its socketpair with the driver.
constexpr int kReportFd = 3;

/// Worker arguments, as the driver passes them (argv after "worker"):
///   --index I --input IN.pt --batches K --threads T
///   then either --actor JSON [--model NAME]   (zcwrap: from_actor().unwrap)
///   or one --load NAME=PATH per model, in pipeline order (torch::jit::load)
/// Returns the exit status. Never throws.
int run_worker(int argc, char** argv);

}  // namespace sample
