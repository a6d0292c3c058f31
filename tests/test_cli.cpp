// The zcwrap binary as a user runs it: pack, inspect, run on real models,
// and one clear line with a documented exit status for every bad input.
#include "torch_support.hpp"  // first: see there

#include <sys/stat.h>

#include <nlohmann/json.hpp>

#include "cli_support.hpp"
#include "pack.hpp"
#include "placement.hpp"

using nlohmann::json;
namespace test = zcwrap::test;

using test::check_failure;
using test::run_cli;

TEST_CASE("pack, inspect and run every fixture; outputs equal torch::jit::load") {
  for (const json& fx : test::fixtures_index()["models"]) {
    if (fx.value("group", "") == "hard") continue;  // tests/test_hard.cpp
    const std::string name = fx["name"];
    CAPTURE(name);
    test::TempDir dir;
    const std::string model = test::fixture(fx["file"]);
    const std::string input = test::fixture(fx["input"]);
    auto packed = run_cli({"pack", model, "-o", dir / "m.zcb"});
    REQUIRE_MESSAGE(packed.status == 0, packed.err);
    CHECK(packed.out.find("packed 1 model") != std::string::npos);
    CHECK(test::file_exists(dir / "m.actor.json"));
    CHECK(test::list_dir(dir.path()).size() == 2);  // no temporary litter

    auto inspected = run_cli({"inspect", dir / "m.actor.json", "--json"});
    REQUIRE(inspected.status == 0);
    const json info = json::parse(inspected.out);
    CHECK(inspected.out == json(zcwrap::describe(dir / "m.actor.json")).dump(2) + "\n");
    CHECK(info["config"] == dir / "m.actor.json");
    CHECK(info["models"][0]["unshared_bytes"] == 0);
    CHECK(info["header"]["data_offset"].get<uint64_t>() % 4096 == 0);

    auto ran = run_cli({"run", dir / "m.actor.json", "--input", input, "--output", dir / "out.pt", "--method",
                       fx["method"]});
    REQUIRE_MESSAGE(ran.status == 0, ran.err);
    std::string why;
    CHECK_MESSAGE(test::bit_equal(test::reference_output(model, fx["method"], input), test::load_value(dir / "out.pt"),
                                  &why),
                  why);
  }
}

TEST_CASE("a pipeline: pack with --model, run each model, config moves with its blob") {
  test::TempDir dir;
  auto packed = run_cli({"pack", "--model", "a=" + test::fixture("pipeline_a.pt"), "--model",
                        "b=" + test::fixture("pipeline_b.pt"), "-o", dir / "p.zcb", "--align", "64K"});
  REQUIRE_MESSAGE(packed.status == 0, packed.err);
  const json config = json::parse(test::read_bytes(dir / "p.actor.json"));
  CHECK(config["blob"] == "p.zcb");
  CHECK(config["models"] == json({"a", "b"}));

  test::TempDir moved;
  ::rename((dir / "p.zcb").c_str(), (moved / "p.zcb").c_str());
  ::rename((dir / "p.actor.json").c_str(), (moved / "p.actor.json").c_str());
  auto human = run_cli({"inspect", moved / "p.actor.json"});
  REQUIRE_MESSAGE(human.status == 0, human.err);
  CHECK(human.out.find("model 'a'") != std::string::npos);
  CHECK(human.out.find("alignment   65536") != std::string::npos);

  for (const char* m : {"a", "b"}) {
    const std::string n = std::string("pipeline_") + m;
    auto ran = run_cli({"run", moved / "p.actor.json", "--model", m, "-i", test::fixture(n + "_in.pt"), "-o",
                       moved / "out.pt"});
    REQUIRE_MESSAGE(ran.status == 0, ran.err);
    std::string why;
    CHECK(test::bit_equal(test::reference_output(test::fixture(n + ".pt"), "forward", test::fixture(n + "_in.pt")),
                          test::load_value(moved / "out.pt"), &why));
  }
  check_failure(run_cli({"run", moved / "p.zcb", "-i", test::fixture("pipeline_a_in.pt"), "-o", moved / "o.pt"}), 2,
                "one of: a, b");
  check_failure(run_cli({"run", moved / "p.zcb", "--model", "c", "-i", test::fixture("pipeline_a_in.pt"), "-o",
                        moved / "o.pt"}),
                2, "no model named 'c'");
}

TEST_CASE("inspect --json prints describe()'s JSON byte for byte, a model without tensors included") {
  test::TempDir dir;
  torch::jit::Module bare("Bare");
  bare.define("def forward(self, x):\n    return x + 1\n");
  zcwrap::PackOptions options;
  options.store_dir = dir.path();
  const zcwrap::ModelWrapper wrapper = zcwrap::ModelWrapper::from_pipeline(
      {{"edge", torch::jit::load(test::fixture("edge.pt"))}, {"bare", bare}}, options);
  const zcwrap::BlobInfo info = zcwrap::describe(wrapper.blob_path());
  REQUIRE(info.models.size() == 2);
  CHECK(info.models[0].tensors.size() == info.models[0].tensor_count);
  CHECK(info.models[0].tensor_count > 10);
  CHECK(info.models[1].tensor_count == 0);

  auto inspected = run_cli({"inspect", wrapper.blob_path(), "--json"});
  REQUIRE_MESSAGE(inspected.status == 0, inspected.err);
  CHECK(inspected.out == json(info).dump(2) + "\n");

  // Without tensors: the same counts and sums, no tensor list.
  const zcwrap::BlobInfo brief = zcwrap::describe(wrapper.blob_path(), {.tensors = false});
  CHECK(brief.models[0].tensors.empty());
  CHECK(brief.models[0].tensor_count == info.models[0].tensor_count);
  CHECK(brief.models[0].shared_bytes == info.models[0].shared_bytes);
  CHECK(brief.tensor_bytes == info.tensor_bytes);
  CHECK(!brief.config);
}

TEST_CASE("LibTorch's CUDA backend is loaded only when a CUDA device is asked for") {
  test::TempDir dir;
  auto packed = run_cli({"pack", test::fixture("lstm.pt"), "-o", dir / "m.zcb", "-q"});
  REQUIRE_MESSAGE(packed.status == 0, packed.err);
  // The dynamic loader names every object it loads (LD_DEBUG=files).
  auto loaded = [&](std::vector<std::string> args) {
    args.insert(args.begin(), {"/usr/bin/env", "LD_DEBUG=files", test::zcwrap_bin()});
    return test::run_process(args);
  };
  const auto cpu = loaded({"run", dir / "m.zcb", "-i", test::fixture("lstm_in.pt"), "-o", dir / "out.pt"});
  REQUIRE_MESSAGE(cpu.status == 0, cpu.err);
  CHECK(cpu.err.find("libtorch_cpu.so") != std::string::npos);  // the loader did report
  CHECK(cpu.err.find("libtorch_cuda.so") == std::string::npos);
  CHECK(cpu.err.find("libcublas") == std::string::npos);

  const auto cuda = loaded({"run", dir / "m.zcb", "-i", test::fixture("lstm_in.pt"), "-o", dir / "out.pt",
                            "--device", "cuda:0"});
  if (zcwrap::detail::load_cuda_backend()) {
    CHECK(cuda.err.find("libtorch_cuda.so") != std::string::npos);
  } else {
    CHECK(cuda.status == 7);  // kDevice
    CHECK(cuda.err.find("no CUDA support") != std::string::npos);
  }
}

TEST_CASE("run's output opens with Python's torch.load") {
  test::TempDir dir;
  REQUIRE(run_cli({"pack", test::fixture("lstm.pt"), "-o", dir / "m.zcb"}).status == 0);
  REQUIRE(run_cli({"run", dir / "m.zcb", "-i", test::fixture("lstm_in.pt"), "-o", dir / "out.pt"}).status == 0);
  auto py = test::run_process({test::python(), "-c",
                               "import sys, torch; o = torch.load(sys.argv[1]); print(type(o).__name__, len(o), "
                               "tuple(o[0].shape))",
                               dir / "out.pt"});
  CHECK_MESSAGE(py.status == 0, py.err);
  CHECK(py.out == "tuple 3 (2, 5, 32)\n");
}

TEST_CASE("bad input: one line, the file named, a documented exit status, nothing left behind") {
  test::TempDir dir;
  const std::string out = dir / "x.zcb";
  for (const json& bad : test::fixtures_index()["bad"]) {
    const std::string file = test::fixture(bad["file"]);
    CAPTURE(file);
    check_failure(run_cli({"pack", file, "-o", out}), 5, bad["file"].get<std::string>());
  }
  check_failure(run_cli({"pack", dir / "missing.pt", "-o", out}), 3, "missing.pt: cannot open");
  check_failure(run_cli({"pack", test::fixture("eager_pickle.pt"), "-o", out}), 5, "torch.jit.script");
  check_failure(run_cli({"pack", test::fixture("lstm.pt"), "-o", out, "--align", "3000"}), 2, "3000");
  check_failure(run_cli({"pack", test::fixture("lstm.pt"), "-o", out, "--align", "banana"}), 2, "banana");
  check_failure(run_cli({"pack", "--model", "a=" + test::fixture("lstm.pt"), "--model", "a=" + test::fixture("edge.pt"),
                        "-o", out}),
                2, "'a' is given twice");
  check_failure(run_cli({"pack", "--model", "noequals", "-o", out}), 2, "NAME=PATH");
  check_failure(run_cli({"pack", test::fixture("lstm.pt"), "-o", "/proc/nope/x.zcb"}), 6, "/proc/nope/x.zcb");
  check_failure(run_cli({"pack", "-o", out}), 2, "nothing to pack");
  check_failure(run_cli({"bogus"}), 2, "subcommand");
  CHECK(test::list_dir(dir.path()).empty());

  REQUIRE(run_cli({"pack", test::fixture("lstm.pt"), "-o", out}).status == 0);
  check_failure(run_cli({"inspect", test::fixture("lstm.pt")}), 4, "lstm.pt");
  check_failure(run_cli({"inspect", dir / "nothing.zcb"}), 3, "nothing.zcb");
  check_failure(run_cli({"run", out, "-i", test::fixture("lstm_in.pt"), "-o", dir / "o.pt", "--method", "nope"}), 2,
                "no method 'nope'");
  check_failure(run_cli({"run", out, "-i", test::fixture("lstm.pt"), "-o", dir / "o.pt"}), 3, "lstm.pt");
  check_failure(run_cli({"run", out, "-i", test::fixture("edge_in.pt"), "-o", dir / "o.pt"}), 5, "edge_in.pt");
  check_failure(run_cli({"run", out, "-i", test::fixture("lstm_in.pt"), "-o", dir / "o.pt", "--device", "cuda:3"}), 7,
                "cuda:3");
  CHECK_FALSE(test::file_exists(dir / "o.pt"));

  // A good blob is not replaced by a failed pack.
  const std::string before = test::read_bytes(out);
  check_failure(run_cli({"pack", test::fixture("garbage.pt"), "-o", out}), 5, "garbage.pt");
  CHECK(test::read_bytes(out) == before);

  // A stale config: the blob was re-packed from another model.
  const std::string config = dir / "x.actor.json";
  const std::string saved_config = test::read_bytes(config);
  REQUIRE(run_cli({"pack", test::fixture("transformer.pt"), "-o", out, "--config", dir / "other.json"}).status == 0);
  check_failure(run_cli({"inspect", config}), 8, "re-packed or replaced");

  // A corrupt blob.
  std::string bytes = test::read_bytes(out);
  bytes[200] = static_cast<char>(bytes[200] ^ 0x10);
  test::write_bytes(dir / "corrupt.zcb", bytes);
  check_failure(run_cli({"inspect", dir / "corrupt.zcb"}), 4, "checksum mismatch");
}

TEST_CASE("help and version") {
  auto help = run_cli({"--help"});
  CHECK(help.status == 0);
  CHECK(help.out.find("pack") != std::string::npos);
  CHECK(help.out.find("Exit status") != std::string::npos);
  auto pack_help = run_cli({"pack", "--help"});
  CHECK(pack_help.status == 0);
  CHECK(pack_help.out.find("--align") != std::string::npos);
  CHECK(run_cli({"--version"}).out.rfind("zcwrap ", 0) == 0);
}

TEST_CASE("inspect and verify show what a blob's Python pickles import: os.system is visible, nothing runs") {
  test::TempDir dir;
  const std::string marker = dir / "marker";
  const std::string command = "touch " + marker;
  // What from_model would store for a module whose __reduce__ is
  // (os.system, (command,)): protocol 4, STACK_GLOBAL over memoized strings.
  const std::string evil = std::string("\x80\x04\x8c\x02os\x94\x8c\x06system\x94\x93\x94\x8c") +
                           static_cast<char>(command.size()) + command + "\x94\x85\x94R\x94.";
  const std::string plain = std::string("\x80\x04\x8c\x0b") + "collections" + "\x8c\x0b" + "OrderedDict" + "\x93)R.";
  // The pipeline object's pickle: (subprocess.call, ...) through a protocol 2 GLOBAL.
  const std::string pipeline = std::string("\x80\x02") + "csubprocess\ncall\nq\x01" + "N\x85R.";
  std::vector<zcwrap::detail::PackInput> inputs;
  for (const auto& [name, pickle] : {std::pair<std::string, std::string>{"evil", evil}, {"plain", plain}}) {
    inputs.push_back({name, "crafted " + name, zcwrap::detail::PythonModel{.skeleton = pickle}});
  }
  const zcwrap::detail::PreparedBlob blob =
      zcwrap::detail::prepare_blob(inputs, zcwrap::Layout::kPipeline, {}, pipeline);
  const std::string path = dir / "evil.zcb";
  zcwrap::detail::write_blob(blob, path);

  auto as_json = run_cli({"inspect", path, "--json"});
  REQUIRE_MESSAGE(as_json.status == 0, as_json.err);
  CHECK(as_json.out == json(zcwrap::describe(path)).dump(2) + "\n");
  const json info = json::parse(as_json.out);
  CHECK(info["models"][0]["imports"] == json({"os.system"}));
  CHECK(info["models"][1]["imports"] == json({"collections.OrderedDict"}));
  CHECK(info["pipeline_object"]["imports"] == json({"subprocess.call"}));
  CHECK(info["pipeline_object"]["raw_bytes"] == pipeline.size());

  auto table = run_cli({"inspect", path, "--brief"});
  REQUIRE_MESSAGE(table.status == 0, table.err);
  CHECK(table.out.find("its pickle imports (unpickling may call them): os.system\n") != std::string::npos);
  CHECK(table.out.find("its pickle imports subprocess.call") != std::string::npos);

  // Good checksums are still exit 0, but verify says what the pickles run.
  auto verified = run_cli({"verify", path});
  REQUIRE_MESSAGE(verified.status == 0, verified.err);
  CHECK(verified.out.find("all checksums match") != std::string::npos);
  CHECK(verified.out.find("note: ") != std::string::npos);
  CHECK(verified.out.find("model 'evil': os.system, pipeline object: subprocess.call") != std::string::npos);
  CHECK(verified.out.find("OrderedDict") == std::string::npos);  // a plain type is not code
  auto verified_json = run_cli({"verify", path, "--json"});
  REQUIRE(verified_json.status == 0);
  CHECK(json::parse(verified_json.out)["foreign_imports"] ==
        json({"model 'evil': os.system", "pipeline object: subprocess.call"}));
  CHECK_FALSE(test::file_exists(marker));  // read, never run

  // TorchScript: its code is TorchScript, and no Python global is listed.
  REQUIRE(run_cli({"pack", test::fixture("transformer.pt"), "-o", dir / "ts.zcb"}).status == 0);
  const json ts = json::parse(run_cli({"inspect", dir / "ts.zcb", "--json"}).out);
  CHECK(ts["models"][0]["skeleton"]["kind"] == "torchscript");
  CHECK(ts["models"][0]["imports"] == json::array());
  CHECK(ts["pipeline_object"] == nullptr);
  CHECK(run_cli({"verify", dir / "ts.zcb"}).out.find("note:") == std::string::npos);

  // A pickle whose imports cannot be told is refused, not listed as empty.
  std::vector<zcwrap::detail::PackInput> unreadable;
  unreadable.push_back({"m", "crafted", zcwrap::detail::PythonModel{
                                            .skeleton = std::string("\x80\x04\x8c\x02os\x8c\x06system\x94\x93\xff.")}});
  zcwrap::detail::write_blob(zcwrap::detail::prepare_blob(unreadable, zcwrap::Layout::kStandalone, {}),
                             dir / "unreadable.zcb");
  for (const char* command : {"inspect", "verify"}) {
    check_failure(run_cli({command, dir / "unreadable.zcb"}), 4, "model 'm': cannot tell what its pickle imports: byte ");
  }
}
