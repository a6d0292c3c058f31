// zcwrap: load TorchScript models into many worker processes from one
// read-only, page-aligned blob, without copying the weights.
//
//   auto wrapper = zcwrap::ModelWrapper::from_model(model);   // driver
//   nlohmann::json config = wrapper.to_actor();               // send to workers
//   auto modules = zcwrap::ModelWrapper::from_actor(config).unwrap("cpu");
//   modules.module().forward({input});
//
// Everything here throws zcwrap::Error. Include <torch/script.h> to use the
// modules; this header does not pull LibTorch in.
#pragma once

#include "zcwrap/error.hpp"
#include "zcwrap/inspect.hpp"
#include "zcwrap/model_wrapper.hpp"
#include "zcwrap/store.hpp"
#include "zcwrap/version.hpp"
