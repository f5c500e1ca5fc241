"""Profile files: shipped data, validation (every problem in one error), save/load round trip."""

from __future__ import annotations

from importlib import resources

import pytest

from tridentcore.core.costmodel import CostModel
from tridentcore.core.types import PROFILE_COLUMNS, ProfileRow, StageKind
from tridentcore.profiles import (
    ProfileError,
    format_profile,
    load_profile,
    load_published_scaling,
    parse_profile,
    save_profile,
    shipped_profiles,
)

HEADER = ",".join(PROFILE_COLUMNS)
GOOD_DIFFUSE = "H200,m,diffuse,512,512,1,1,1,35.0,4.0,0.1,3.8,measured"


def test_shipped_h200_loads_and_validates():
    profile = load_profile("h200")
    assert profile.name == "h200"
    assert "h200" in profile.origin
    assert len(profile.rows) == 86
    assert profile.gpus() == ("H200",)
    assert profile.models() == ("flux-dev", "sd3-medium", "sdxl", "wan2.1-1.3b")
    encode = [r for r in profile.rows if r.stage is StageKind.ENCODE]
    assert encode and all(r.height is None and r.width is None and r.frames is None for r in encode)


def test_shipped_names_are_the_profile_csvs_in_data():
    names = shipped_profiles()
    assert "h200" in names
    assert "published_scaling" not in names and "denoisers" not in names  # reference data, not stage profiles
    on_disk = {
        p.name[:-4]
        for p in resources.files("tridentcore.profiles").joinpath("data").iterdir()
        if p.name.endswith(".csv") and p.name not in ("published_scaling.csv", "denoisers.csv")
    }
    assert set(names) == on_disk
    for name in names:  # every shipped profile validates
        assert load_profile(name).rows


def test_unknown_shipped_name_lists_valid_names():
    with pytest.raises(ProfileError) as err:
        load_profile("h300")
    message = str(err.value)
    assert "h300" in message and "h200" in message and "shipped profiles" in message


def test_missing_path_is_an_error(tmp_path):
    with pytest.raises(ProfileError, match="no such file"):
        load_profile(tmp_path / "absent.csv")
    for there in (tmp_path, "/dev/zero"):  # (they read "no such file")
        with pytest.raises(ProfileError, match="not a regular file"):
            load_profile(str(there))


def test_broken_csv_reports_every_problem_with_file_line_and_column(tmp_path):
    lines = [
        HEADER,  # line 1
        GOOD_DIFFUSE,  # line 2
        "H200,m,diffuse,768,768,1,1,1,abc,4.0,0.1,3.8,measured",  # 3: latency not a number
        "H200,m,diffuse,1024,1024,1,1,1,-5,4.0,0.1,3.8,measured",  # 4: negative latency
        "H200,m,upscale,1024,1024,1,1,1,5,4.0,0.1,3.8,measured",  # 5: unknown stage
        "H200,m,encode,512,,,1,1,20,4.0,0.1,3.8,measured",  # 6: encode with a shape
        "H200,m,decode,512,,1,1,1,20,4.0,0.1,3.8,measured",  # 7: decode without width
        "H200,m,diffuse,1536,1536,1,0,1,20,4.0,0.1,3.8,measured",  # 8: batch 0
        "H200,m,diffuse,2048,2048,1,1,0,20,4.0,0.1,3.8,measured",  # 9: degree 0
        GOOD_DIFFUSE,  # 10: duplicate of line 2
        "H200,m,diffuse,2048,2048,1,2,1,20,4.0,x,3.8,measured",  # 11: act_gib not a number
        "H200,m,diffuse,2048,2048,1,4,1,20,4.0,0.1",  # 12: too few fields
        # 13-16: past what any request asks or a node holds (a side of 10^20 px priced 4096^2 at 0.14 s)
        "H200,m,diffuse,99999999999999999999,2048,1,1,1,20,4.0,0.1,3.8,measured",
        "H200,m,decode,1024,1024,130,1,1,20,4.0,0.1,3.8,measured",
        "H200,m,diffuse,1024,1024,1,1025,1,20,4.0,0.1,3.8,measured",
        "H200,m,diffuse,1024,1024,1,1,129,20,4.0,0.1,3.8,measured",
        "H200,m,diffuse,5_12,512,1,1,+2,20,4.0,0.1,3.8,measured",  # 17: Python-only spellings (outside test)
    ]
    path = tmp_path / "broken.csv"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(ProfileError) as err:
        load_profile(path)
    message = str(err.value)
    problems = err.value.problems
    assert str(path) in message
    expected = [
        ("line 3", "column latency_ms", "not a number"),
        ("line 4", "column latency_ms", "negative"),
        ("line 5", "column stage", "unknown stage 'upscale'"),
        ("line 6", "column height", "encode rows have no shape"),
        ("line 7", "column width", "need a shape"),
        ("line 8", "column batch", ">= 1"),
        ("line 9", "column degree", ">= 1"),
        ("line 10", "duplicate of line 2", ""),
        ("line 11", "column act_gib", "not a number"),
        ("line 12", "expected 13 fields", ""),
        ("line 13", "column height", "99999999999999999999 is above 4096 (the largest side any request may ask)"),
        ("line 14", "column frames", "130 is above 129"),
        ("line 15", "column batch", "1025 is above 1024"),
        ("line 16", "column degree", "129 is above 128 (the GPUs of one node at most)"),
        ("line 17", "column height", "not an integer ('5_12')"),
        ("line 17", "column degree", "not an integer ('+2')"),
    ]
    for line, column, what in expected:
        assert any(p.startswith(line + ",") or p.startswith(line + ":") for p in problems), (line, problems)
        hit = [p for p in problems if (p.startswith(line + ",") or p.startswith(line + ":")) and column in p and what in p]
        assert hit, (line, column, what, problems)
    assert len(problems) == len(expected)


def test_header_problems_are_named(tmp_path):
    header = HEADER.replace("act_gib", "activation")
    path = tmp_path / "bad_header.csv"
    path.write_text(header + "\n" + GOOD_DIFFUSE + "\n")
    with pytest.raises(ProfileError) as err:
        load_profile(path)
    message = str(err.value)
    assert "line 1, column act_gib: missing" in message
    assert "'activation': unknown column" in message


def test_empty_and_headless_profiles_are_errors(tmp_path):
    with pytest.raises(ProfileError, match="empty file"):
        parse_profile("", origin="x.csv")
    with pytest.raises(ProfileError, match="no data rows"):
        parse_profile(HEADER + "\n", origin="x.csv")


def test_save_load_round_trip(tmp_path):
    rows = load_profile("h200").rows
    path = save_profile(rows, tmp_path / "copy.csv")
    again = load_profile(path)
    assert again.rows == rows
    assert again.name == "copy"
    shipped = resources.files("tridentcore.profiles").joinpath("data", "h200.csv").read_text()
    assert path.read_text() == shipped  # exact format: same columns, order and number spelling


def test_save_writes_empty_shape_for_encode(tmp_path):
    rows = (
        ProfileRow("cpu", "tiny", StageKind.ENCODE, None, None, None, 2, 1, 3.5, 0.1, 0.01, 0.05, "measured"),
        ProfileRow("cpu", "tiny", StageKind.DIFFUSE, 64, 96, 1, 1, 1, 12.25, 0.2, 0.02, 0.1, "measured"),
    )
    text = format_profile(rows)
    lines = text.splitlines()
    assert lines[0] == HEADER
    assert lines[1] == "cpu,tiny,encode,,,,2,1,3.5,0.1,0.01,0.05,measured"
    assert lines[2] == "cpu,tiny,diffuse,64,96,1,1,1,12.25,0.2,0.02,0.1,measured"
    path = save_profile(rows, tmp_path / "tiny.csv")
    assert load_profile(path).rows == rows


def test_profile_builds_a_cost_model_with_options():
    model = load_profile("h200").cost_model(host_link_gbps=25.0)
    assert isinstance(model, CostModel)
    assert model.links["host"] == 25.0


def test_published_scaling_ratios():
    points = load_published_scaling()
    assert len(points) == 25
    scored = [p for p in points if p.degree > 1]
    assert len(scored) == 18
    eager4 = [p for p in points if p.model == "flux-dev" and p.degree == 4 and "eager" in p.note]
    compiled4 = [p for p in points if p.model == "flux-dev" and p.degree == 4 and "compile" in p.note]
    assert eager4[0].ratio == pytest.approx(4.24 / 6.71)
    assert compiled4[0].ratio == pytest.approx(1.63 / 4.30)
    assert all(p.ratio == 1.0 for p in points if p.degree == 1)




def _row(latency: str = "35.0", height: int = 768, peak: str = "4.1") -> str:
    return f"H200,m,diffuse,{height},{height},1,1,1,{latency},{peak},0.2,3.8,measured\n"


@pytest.mark.parametrize("latency, peak", [("1e10", "4.1"), ("1e308", "4.1"), ("1e-320", "4.1"), ("35", "1e9")])
def test_numbers_past_their_range_are_refused(tmp_path, latency, peak):
    """A latency of 1e10 ms (a profile CSV of the user's own) made trident's simulation run for minutes,
    1e308 for ever; 1e-320 priced a stage at 0.0 ms."""
    path = tmp_path / "p.csv"
    path.write_text(HEADER + "\n" + _row(latency, peak=peak))
    with pytest.raises(ProfileError, match=r"line 2, column (latency_ms|peak_gib): \S+ is outside \["):
        load_profile(path)


@pytest.mark.parametrize("peak, below", [("3.0", "weights_gib"), ("0.1", "act_gib")])
def test_a_peak_below_the_weights_or_the_activations_is_refused(tmp_path, peak, below):
    """The peak includes both (docs/profiles.md); a row with peak 3.0 under weights 3.8 (swapped
    columns) was read."""
    path = tmp_path / "p.csv"
    path.write_text(HEADER + "\n" + _row(peak=peak))
    with pytest.raises(ProfileError, match=rf"line 2, column peak_gib: {float(peak):g} is below {below}"):
        load_profile(path)
    path.write_text(HEADER + "\n" + _row(peak="4.0"))  # 3.8 + 0.2: rounded as the file rounds its parts
    assert len(load_profile(path).rows) == 1


def test_a_profile_file_past_the_size_limit_is_not_read(tmp_path):
    from tridentcore.core.defaults import MAX_PROFILE_BYTES

    path = tmp_path / "big.csv"
    path.write_text(HEADER + "\n" + "#" * (MAX_PROFILE_BYTES + 10) + "\n")
    with pytest.raises(ProfileError, match=f"larger than the limit of {MAX_PROFILE_BYTES} bytes"):
        load_profile(path)


def test_a_large_profile_loads_in_near_linear_time(tmp_path):
    """20,000 rows of one model and stage took 7 s (every row compared with every other)."""
    import time

    path = tmp_path / "many.csv"
    rows = (f"H200,m,diffuse,{16 * (1 + i % 256)},{16 * (1 + i // 256)},1,1,1,{35 + i * 0.01:.2f},4.1,0.2,3.8,measured\n"
            for i in range(20_000))  # (every side within 4096)
    path.write_text(HEADER + "\n" + "".join(rows))
    t0 = time.perf_counter()
    load_profile(path).cost_model()
    assert time.perf_counter() - t0 < 5.0  # about 1 s here; a loose bound for a busy host


def test_a_byte_order_mark_before_the_header_is_read_as_such(tmp_path):
    """It was refused: "unknown column '\\ufeffgpu'" (a mix YAML with one was read)."""
    path = tmp_path / "bom.csv"
    path.write_text("\ufeff" + HEADER + "\n" + _row())
    assert len(load_profile(path).rows) == 1
