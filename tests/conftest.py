"""Fixtures shared by the test files, and the split between the quick and the full suite."""

import os
import re
import shutil

import pytest

SAMPLE = os.path.join(os.path.dirname(__file__), "data", "cifar10-sample")

# The full suite's own tests (marker `full`; the quick command is `pytest -m "not full"`): several
# processes, processes killed and restarted, the GPU script's dry runs, the benchmark harness, and
# the slowest single runs (an ImageNet network, ResNet-1001, the ablation grid, fresh interpreters).
# A file name marks the whole file, "file::test" one test (all its parameters); a module of the
# package, "module.py::dotted.name", one of its doctests.
FULL_SUITE = (
    "test_distributed.py",
    "test_gpu_benchmarks.py",
    "test_benchmarks.py",
    "test_train.py::test_kill_and_resume",
    "test_train.py::test_a_resumed_run_equals_the_uninterrupted_run",
    "test_device_data.py::test_a_run_on_the_sample_folder_learns_without_tensorflow_and_resumes_bit_for_bit",
    "test_device_data.py::test_two_processes_with_the_device_pipeline_train_like_one",
    "test_export.py::test_kill_during_export_never_leaves_a_version_that_cannot_be_served",
    "test_distributed_resume.py",
    "test_ablation.py",
    "test_train.py::test_a_resumed_run_that_reads_ahead_finishes",
    "test_train.py::test_multi_replica_on_two_logical_cpus",
    "test_train.py::test_user_callbacks_on_the_custom_loop",
    "test_step_capture.py::test_the_replayed_ddp_step_trains_as_its_eager_step",
    "test_device_data.py::test_a_run_resumes_only_on_its_own_pipeline",
    "test_folders.py::test_the_imagenet_recipe_trains_a_resnet50_on_small_crops",
    "test_models.py::test_resnet1001_builds_with_default_recursion_limit",
    "test_runtime.py::test_threads_follow_the_cpus_this_process_may_use",
    "test_preprocessing.py::test_preprocessing_does_not_import_tensorflow",
    "test_serve.py::test_a_new_version_is_served_under_load_without_a_lost_request",
    "test_serve.py::test_many_stalled_uploads_are_all_closed",
    "test_export.py::test_imagenet_builder_exports_with_resize_and_centre_crop",
    "test_repeated.py::test_a_frozen_stage_keeps_its_statistics_as_written_out_units_do",
    "test_repeated.py::test_weights_files_load_into_either_layout",
    "test_repeated.py::test_the_run_configuration_takes_scan_units",
    "test_repeated.py::test_bad_arguments_are_refused",
    "test_repeated.py::test_the_scanned_network_exports_to_a_saved_model",
    "builders.py::keras_preact.model.builders.ResNet1001",  # builds 333 units; counted in test_models
    "saved_model.py::keras_preact.serving.saved_model.export_onnx",  # test_export compares an ONNX export
)


def _in_full_suite(item, entry):
    file, _, test = entry.partition("::")
    return item.path.name == file and (not test or getattr(item, "originalname", item.name) == test)


def _names_a_test(entry):
    """Whether `entry`'s file exists and defines its test or documents its doctest's object (read
    from the source: a run of a few selected tests collects no others)."""
    file, _, test = entry.partition("::")
    tests = os.path.dirname(__file__)
    found = [os.path.join(folder, file) for folder, _, files in os.walk(os.path.join(tests, "..", "keras_preact")) if file in files]
    path = os.path.join(tests, file) if file.startswith("test_") else (found or [""])[0]
    if not os.path.exists(path):
        return False
    name = test.rpartition(".")[2]  # a doctest's object: `def name(` or `name = ...`
    with open(path) as f:
        return not test or re.search(rf"^(def {re.escape(name)}\(|{re.escape(name)} = )", f.read(), re.MULTILINE) is not None


def pytest_collection_modifyitems(config, items):
    for entry in FULL_SUITE:
        if not _names_a_test(entry):
            raise pytest.UsageError(f"tests/conftest.py FULL_SUITE names {entry!r}, which is no test: update the list.")
        for item in items:
            if _in_full_suite(item, entry):
                item.add_marker(pytest.mark.full)


@pytest.fixture
def sample_copy(tmp_path):
    """A copy of the shipped sample image folder, to break in a test."""
    target = tmp_path / "cifar"
    shutil.copytree(SAMPLE, target)
    return target
