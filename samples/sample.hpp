// What the two halves of zcwrap-sample agree on.
//
// The driver opens an actor config and starts N copies of itself as
// `zcwrap-sample worker --actor JSON ...`, each with its stdout on a pipe.
// Each worker rebuilds the model from the actor config
// (ActorWrapper::from_actor(config).load(): zero-copy, the weights stay in
// the blob's shared mapping), serves its batches, prints one JSON line, and
// exits:
//   {"ok": true, "load_ms", "batch_ms" (median), "output", "checksum"}
//   {"ok": false, "error"}
// To measure memory and compare with torch::jit::load, use `zcwrap bench`.
#pragma once

namespace sample {

/// Worker arguments, as the driver passes them (argv after "worker"):
///   --actor JSON --input IN.pt --batches K --threads T [--model NAME]
/// Returns the exit status. Never throws.
int run_worker(int argc, char** argv);

}  // namespace sample
