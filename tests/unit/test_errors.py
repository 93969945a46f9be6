"""Structured errors: library code names its settings, each front end words them its own way."""

from __future__ import annotations

import pickle

import pytest

from lejepa_ray.cli import main
from lejepa_ray.data.convert import convert_image_folder
from lejepa_ray.errors import ConfigError, SourceError, check_field, option


def test_a_field_error_carries_the_field_the_value_and_what_was_expected():
    with pytest.raises(ConfigError) as caught:
        check_field(False, "shard_size_mb", 0, "a size > 0")
    e = caught.value
    assert (e.field, e.value, e.expected) == ("shard_size_mb", 0, "a size > 0")
    # The API's wording: the keyword argument, as the caller wrote it.
    assert str(e) == "shard_size_mb=0 is invalid: expected a size > 0."
    # The command line's: the flag, or the positional argument's name.
    assert e.worded(lambda n: f"--{n}") == "--shard_size_mb=0 is invalid: expected a size > 0."


def test_every_setting_a_message_names_is_worded_and_renamed():
    e = SourceError(f"{option('data')}='x' does not exist; set {option('data')} to a folder.")
    assert str(e) == "data='x' does not exist; set data to a folder."
    assert e.worded(str.upper) == "DATA='x' does not exist; set DATA to a folder."
    e = SourceError(f"{option('data')}='x' does not exist.", field="data", value="x")
    moved = e.said_of("probe.data")
    assert isinstance(moved, SourceError) and moved.field == "probe.data"
    assert str(moved) == "probe.data='x' does not exist."


def test_an_error_keeps_its_structure_across_processes():
    """Ray pickles a worker's error to the driver, which re-raises it."""
    e = pickle.loads(pickle.dumps(ConfigError(f"{option('k')}=0 is bad.", field="k", value=0)))
    assert isinstance(e, ConfigError) and (e.field, e.value) == ("k", 0)
    assert str(e) == "k=0 is bad." and e.worded(lambda n: f"--{n}") == "--k=0 is bad."


def test_the_api_says_keyword_arguments_and_the_command_line_says_flags(tmp_path, capsys):
    with pytest.raises(ConfigError, match=r"^workers=0 is invalid: expected at least 1\.$"):
        convert_image_folder(str(tmp_path), str(tmp_path / "out"), workers=0)
    assert main(["data", "convert", str(tmp_path), str(tmp_path / "out"), "--workers", "0"]) == 2
    err = capsys.readouterr().err
    assert err == "lejepa-ray: error: --workers=0 is invalid: expected at least 1.\n", err


def test_expected_is_plain_words_and_an_error_about_no_setting_is_not_renamed():
    e = ConfigError("x", field="val_data", value="v", expected=f"unset unless {option('a')} is")
    assert e.expected == "unset unless a is"
    about_a_path = SourceError("data.path='/x' does not exist.")
    assert about_a_path.said_of("probe.data") is about_a_path
