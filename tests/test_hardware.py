"""Hardware catalogue: sourced numbers, forgiving lookup, user profiles, fit and roofline."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from importlib import resources

import matplotlib
import pytest

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

import odtkit as odt  # noqa: E402
from odtkit import hardware as hw  # noqa: E402
from odtkit import units  # noqa: E402
from odtkit.hardware._profiles import DEVICE_FIELDS, LINK_FIELDS  # noqa: E402
from odtkit.viz import catalogue  # noqa: E402

KIB = 1024
MIB = 1024 * KIB
PEAK_KEYS = [f"peak_macs_per_s.{d}" for d in hw.DTYPES]

# A complete, valid user profile; tests break one thing at a time.
VALID = """\
name = "my-board"
kind = "mcu"
description = "a board of my own"

[sram_bytes]
value = 262144
source = "my datasheet"

[dram_bytes]
value = 0
source = "my datasheet"

[flash_bytes]
value = 1048576
source = "my datasheet"

[clock_hz]
value = 100000000
source = "my datasheet"

[bandwidth_bytes_per_s]
value = 400000000
derived = true
source = "my datasheet"
note = "100 MHz x 4 bytes"

[power_w]
unknown = "not measured yet"

[peak_macs_per_s.int8]
value = 200000000
derived = true
source = "my datasheet"
note = "100 MHz x 2 MAC/cycle"

[peak_macs_per_s.fp16]
unknown = "no fp16 unit"

[peak_macs_per_s.fp32]
value = 100000000
source = "my datasheet"
"""


@dataclass
class StandInReport:
    """The attributes of odtkit.memory.MemoryReport that fit() reads."""

    by_category: dict
    peak_bytes: int
    frozen_weight_bytes: int
    forward_macs: int | None = None
    backward_macs: int | None = None
    precision: str = "fp32"
    peak_components: dict | None = None
    peak_at: str = ""
    allocator_peak_bytes: int | None = None


def small_report(**kw) -> StandInReport:
    # 600 KiB weights of which 580 KiB frozen, 20 KiB grads, 150 KiB activations: peak 770 KiB
    base = dict(by_category={"weights": 600 * KIB, "gradients": 20 * KIB, "optimizer": 0,
                             "activations": 150 * KIB},
                peak_bytes=770 * KIB, frozen_weight_bytes=580 * KIB)
    return StandInReport(**{**base, **kw})


# ---------------------------------------------------------------- the catalogue


def test_catalogue_covers_the_issue_devices():
    names = hw.devices()
    assert len(names) >= 11
    for wanted in ("stm32f746", "stm32h743", "nrf52840", "rp2040", "esp32-s3", "gap9",
                   "raspberry-pi-4", "jetson-nano", "jetson-agx-orin-64gb",
                   "phone-snapdragon-7-gen-1", "laptop-x86-4core"):
        assert wanted in names
    assert {hw.device(n).kind for n in names} == set(hw.KINDS)


@pytest.mark.parametrize("name", hw.devices())
def test_every_device_number_is_sourced_or_explained(name):
    dev = hw.device(name)
    for key in [*DEVICE_FIELDS, *PEAK_KEYS]:
        if key in dev.sources:
            q = dev.sources[key]
            assert q.source.strip(), key
            value = (dev.peak_macs_per_s[key.split(".")[1]] if key in PEAK_KEYS
                     else getattr(dev, key))
            assert value == q.value
            if q.derived:  # a derived number says how it was computed
                assert q.note, key
        else:
            assert dev.unknown[key].strip(), key
            assert (key.split(".")[1] not in dev.peak_macs_per_s if key in PEAK_KEYS
                    else getattr(dev, key) is None)


@pytest.mark.parametrize("name", hw.links())
def test_every_link_number_is_sourced_or_explained(name):
    lk = hw.link(name)
    for key in LINK_FIELDS:
        assert (key in lk.sources and lk.sources[key].source) or lk.unknown[key], key


def test_stm32f746_matches_the_256kb_paper_board():
    dev = hw.device("stm32f746")
    assert dev.sram_bytes == 327680 == 320 * KIB
    assert dev.flash_bytes == 1 * MIB
    assert dev.dram_bytes == 0
    assert dev.kind == "mcu"


def test_derived_peaks_agree_with_clock_times_mac_per_cycle():
    f746, h743 = hw.device("stm32f746"), hw.device("stm32h743")
    assert f746.peak("int8") == 2 * f746.clock_hz  # SMLAD: two MACs per cycle
    assert h743.peak("int8") == 2 * h743.clock_hz
    assert f746.peak("fp32") == f746.clock_hz
    pi = hw.device("raspberry-pi-4")
    assert pi.peak("fp32") * 2 == pytest.approx(96e9)  # 4 cores x 8 MAC x 1.5 GHz = 96 GFLOP/s
    nano = hw.device("jetson-nano")
    assert nano.peak("fp32") == pytest.approx(128 * nano.clock_hz)
    assert nano.peak("fp16") * 2 == pytest.approx(472e9)  # vendor's FLOP/s, FLOP = 2 MAC
    assert set(f746.derived_fields) >= {"peak_macs_per_s.int8", "bandwidth_bytes_per_s"}
    assert "sram_bytes" not in f746.derived_fields


def test_bundled_file_names_match_profile_names():
    root = resources.files("odtkit.hardware").joinpath("profiles")
    stems = sorted(e.name[:-5] for e in root.iterdir() if e.name.endswith(".toml"))
    assert stems == hw.devices()
    link_stems = sorted(e.name[:-5] for e in root.joinpath("links").iterdir()
                        if e.name.endswith(".toml"))
    assert link_stems == hw.links()


# ---------------------------------------------------------------- lookup


def test_names_are_sorted_and_stable():
    assert hw.devices() == sorted(hw.devices()) == hw.devices()
    assert hw.links() == sorted(hw.links())
    assert set(hw.devices(kind="mcu")) == {n for n in hw.devices() if hw.device(n).kind == "mcu"}
    with pytest.raises(ValueError, match="gpu-module"):
        hw.devices(kind="gpu")


@pytest.mark.parametrize("spelling", ["STM32F746", "stm32-f746", "Stm32 F746", "stm32_f746"])
def test_device_is_forgiving_about_case_and_separators(spelling):
    assert hw.device(spelling) is hw.device("stm32f746")


def test_aliases_and_profiles_pass_through():
    assert hw.device("RPi4").name == "raspberry-pi-4"
    dev = hw.device("stm32f746")
    assert hw.device(dev) is dev
    assert hw.link("LoRaWAN") is hw.link("lorawan") is hw.link("lo-ra-wan")
    assert hw.link("NB IoT").name == "nb-iot"


def test_unknown_names_suggest_the_closest():
    with pytest.raises(hw.UnknownNameError, match=r"Did you mean 'stm32f746'") as err:
        hw.device("stm32f74")
    assert isinstance(err.value, ValueError) and isinstance(err.value, LookupError)
    # the prefix match first, then the nearest spelling; aliases resolve but are not offered
    assert "Did you mean 'stm32f746', 'stm32h743'?" in str(err.value)
    assert "stm32f746ng" not in str(err.value)
    with pytest.raises(ValueError, match=r"Did you mean 'lorawan'"):
        hw.link("lorawn")
    with pytest.raises(TypeError, match="string"):
        hw.device(42)


def test_public_api_reaches_the_catalogue():
    assert odt.device("stm32f746") is hw.device("stm32f746")
    assert odt.devices() == hw.devices() and odt.links() == hw.links()
    assert odt.FitReport is hw.FitReport and odt.LinkProfile is hw.LinkProfile
    for name in hw.__all__:
        assert hasattr(hw, name), name


# ---------------------------------------------------------------- user profiles


def write(tmp_path, text, name="board.toml"):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_a_valid_user_profile_loads(tmp_path):
    path = write(tmp_path, VALID)
    dev = hw.load_profile(path)
    assert (dev.name, dev.sram_bytes, dev.peak("int8")) == ("my-board", 256 * KIB, 2e8)
    assert dev.sources["bandwidth_bytes_per_s"].derived
    assert dev.unknown["power_w"] == "not measured yet"
    assert hw.device(str(path)) == dev  # a .toml path works wherever a name does


@pytest.mark.parametrize(
    ("old", "new", "field", "hint"),
    [
        ("[flash_bytes]\nvalue = 1048576\nsource = \"my datasheet\"\n", "", "flash_bytes",
         "missing"),
        ("value = 262144", "value = \"256 KB\"", "sram_bytes.value", "whole number"),
        ("value = 262144", "value = 262144.5", "sram_bytes.value", "whole number"),
        ("value = 262144", "value = -1", "sram_bytes.value", "zero or more"),
        ("value = 100000000\nsource", "value = 0\nsource", "clock_hz.value", "greater than zero"),
        ('kind = "mcu"', 'kind = "fpga"', "kind", "gpu-module"),
        ('name = "my-board"\n', "", "name", "missing"),
        ("value = 262144\nsource = \"my datasheet\"", "value = 262144", "sram_bytes.source",
         "source"),
        ("[power_w]", "[power_w]\nvalue = 1", "power_w", "only unknown"),
        ("derived = true\nsource", "derived = \"yes\"\nsource", "derived", "bool"),
        ("[peak_macs_per_s.fp16]", "[peak_macs_per_s.fp64]", "peak_macs_per_s.fp64",
         "unexpected"),
        ("[sram_bytes]\nvalue = 262144\nsource = \"my datasheet\"\n",
         "[sram_bytes]\nvalue = 262144\nsource = \"my datasheet\"\nsoruce = \"typo\"\n",
         "sram_bytes", "unexpected key"),
    ],
)
def test_bad_user_profiles_name_file_and_field(tmp_path, old, new, field, hint):
    assert old in VALID
    path = write(tmp_path, VALID.replace(old, new, 1))
    with pytest.raises(hw.ProfileError) as err:
        hw.load_profile(path)
    message = str(err.value)
    assert str(path) in message and err.value.path == str(path)
    assert field in message
    assert hint in message
    assert isinstance(err.value, ValueError)


def test_bad_toml_syntax_names_file_and_line(tmp_path):
    path = write(tmp_path, VALID.replace('kind = "mcu"', "kind = mcu"))
    with pytest.raises(hw.ProfileError, match=r"not valid TOML.*line 2") as err:
        hw.load_profile(path)
    assert str(path) in str(err.value)


def test_a_missing_file_is_named(tmp_path):
    with pytest.raises(hw.ProfileError, match="no such profile file"):
        hw.load_profile(tmp_path / "nope.toml")


def test_user_link_profiles(tmp_path):
    text = ('name = "my-radio"\n[throughput_bits_per_s]\nvalue = 1000\nsource = "spec"\n'
            '[latency_s]\nunknown = "n/a"\n[energy_per_bit_j]\nunknown = "n/a"\n'
            '[duty_cycle]\nvalue = 0.5\nsource = "regulator"\n')
    lk = hw.load_link(write(tmp_path, text, "radio.toml"))
    assert lk.transfer_s(125) == pytest.approx(2.0)  # 1000 bits / 1000 bit/s / 0.5
    path = write(tmp_path, text.replace("value = 0.5", "value = 1.5"), "bad.toml")
    with pytest.raises(hw.ProfileError, match=r"bad\.toml.*duty_cycle"):
        hw.load_link(path)


def test_a_folder_is_not_a_profile_and_the_message_names_the_files_inside(tmp_path):
    with pytest.raises(hw.ProfileError, match="is a folder.*no .toml file") as err:
        hw.load_profile(tmp_path)
    assert err.value.path == str(tmp_path)
    write(tmp_path, VALID, "my-board.toml")
    with pytest.raises(hw.ProfileError, match=r"is a folder.*holds my-board\.toml.*e\.g\. "):
        hw.load_profile(tmp_path)
    with pytest.raises(hw.ProfileError, match="is a folder"):
        hw.load_link(tmp_path)
    with pytest.raises(hw.ProfileError, match="is a folder"):
        hw.device(tmp_path)  # a path goes to load_profile


def test_a_file_that_is_not_text_is_named(tmp_path):
    path = tmp_path / "board.toml"
    path.write_bytes(b"name = \"\xff\xfe\"\n")
    with pytest.raises(hw.ProfileError, match="not UTF-8 text") as err:
        hw.load_profile(path)
    assert err.value.path == str(path)


@pytest.mark.parametrize(
    ("old", "new", "field", "hints"),
    [
        # inf is a TOML float: greater than zero, yet no clock
        ("value = 100000000\nsource", "value = inf\nsource", "clock_hz.value",
         ("finite", "greater than zero", "got inf")),
        ("value = 100000000\nsource", "value = nan\nsource", "clock_hz.value",
         ("finite", "got nan")),
        ("value = 100000000\nsource", "value = -5\nsource", "clock_hz.value",
         ("greater than zero", "got -5")),
        # 1e23 bytes of SRAM: as a TOML integer and as a float
        ("value = 262144", "value = 100000000000000000000000", "sram_bytes.value",
         ("at most 1 PiB", "not the memory of one device")),
        ("value = 262144", "value = 1e23", "sram_bytes.value", ("whole number", "1 PiB")),
        ("value = 1048576", "value = -1048576", "flash_bytes.value", ("zero or more",)),
        ("value = 400000000", "value = 4e20", "bandwidth_bytes_per_s.value", ("1 PB/s",)),
        ("value = 200000000", "value = 2e30", "peak_macs_per_s.int8.value", ("100 PMAC/s",)),
    ],
)
def test_numbers_must_be_finite_positive_and_sane(tmp_path, old, new, field, hints):
    path = write(tmp_path, VALID.replace(old, new, 1))
    with pytest.raises(hw.ProfileError) as err:
        hw.load_profile(path)
    message = str(err.value)
    assert str(path) in message and field in message and "e.g. value = " in message
    for hint in hints:
        assert hint in message, (hint, message)


def test_the_upper_bound_is_inclusive_and_holds_in_python_too():
    pib = 2**50  # 1 PiB: the largest memory a profile may state
    q = hw.Quantity(pib, "what-if")
    assert hw.DeviceProfile(name="x", kind="mcu", sram_bytes=pib,
                            sources={"sram_bytes": q}).sram_bytes == pib
    big = hw.Quantity(pib + 1, "what-if")
    with pytest.raises(hw.ProfileError, match="sram_bytes.*at most 1 PiB.*got 1125899906842625"):
        hw.DeviceProfile(name="x", kind="mcu", sram_bytes=pib + 1, sources={"sram_bytes": big})
    f746 = hw.device("stm32f746")
    with pytest.raises(hw.ProfileError, match="sram_bytes.*1 PiB.*got 100000000000000000000000"):
        f746.variant("absurd", sram_bytes=10**23, source="typo")
    with pytest.raises(hw.ProfileError, match="clock_hz.*greater than zero.*got inf"):
        f746.variant("inf", clock_hz=float("inf"), source="typo")
    with pytest.raises(hw.ProfileError, match="clock_hz.*got -1"):
        f746.variant("neg", clock_hz=-1, source="typo")


def test_link_numbers_are_checked_like_device_numbers(tmp_path):
    text = ('name = "my-radio"\n[throughput_bits_per_s]\nvalue = 1000\nsource = "spec"\n'
            '[latency_s]\nvalue = 0.01\nsource = "spec"\n[energy_per_bit_j]\nunknown = "n/a"\n'
            '[duty_cycle]\nunknown = "n/a"\n')
    assert hw.load_link(write(tmp_path, text, "ok.toml")).latency_s == 0.01
    cases = [("value = 0.01", "value = -0.01", "latency_s.value", "zero or more"),
             ("value = 1000", "value = inf", "throughput_bits_per_s.value", "got inf"),
             ("value = 1000", "value = 1e15", "throughput_bits_per_s.value", "10 Tbit/s")]
    for old, new, field, hint in cases:
        path = write(tmp_path, text.replace(old, new, 1), "bad.toml")
        with pytest.raises(hw.ProfileError, match=rf"bad\.toml.*{field}.*{hint}"):
            hw.load_link(path)


def test_the_old_throughput_name_says_it_was_renamed(tmp_path):
    text = ('name = "my-radio"\n[throughput_bps]\nvalue = 1000\nsource = "spec"\n'
            '[latency_s]\nunknown = "n/a"\n[energy_per_bit_j]\nunknown = "n/a"\n'
            '[duty_cycle]\nunknown = "n/a"\n')
    with pytest.raises(hw.ProfileError, match=r"throughput_bps.*renamed to "
                                              r"throughput_bits_per_s.*bits, not bytes"):
        hw.load_link(write(tmp_path, text, "old.toml"))
    with pytest.raises(hw.ProfileError, match="throughput_bps is now throughput_bits_per_s"):
        hw.LinkProfile.from_quantities(
            name="r", quantities={"throughput_bps": hw.Quantity(1000, "spec")})
    lk = hw.link("lorawan")
    assert lk.throughput_bits_per_s == 5470 and not hasattr(lk, "throughput_bps")


def test_every_profile_field_has_its_unit_in_its_name():
    """Units live in names: bytes, Hz, s, W, J, bits; a count of MACs is its own unit."""
    suffixes = ("_bytes", "_hz", "_bytes_per_s", "_w", "_bits_per_s", "_s", "_j")
    numbers = [*DEVICE_FIELDS, "peak_macs_per_s", *LINK_FIELDS]
    numbers += [f.name for f in dataclasses.fields(hw.FitReport)
                if f.type in ("int", "float | None", "int | None")]
    dimensionless = {"duty_cycle"}  # a fraction of the time
    for name in numbers:
        assert name in dimensionless or name.endswith(suffixes), name


def test_profiles_validate_in_post_init():
    q = hw.Quantity(256 * KIB, "datasheet")
    ok = hw.DeviceProfile(name="x", kind="mcu", sram_bytes=256 * KIB, sources={"sram_bytes": q})
    assert ok.sram_bytes == 256 * KIB
    with pytest.raises(hw.ProfileError, match="sram_bytes.*no source"):
        hw.DeviceProfile(name="x", kind="mcu", sram_bytes=256 * KIB)
    with pytest.raises(hw.ProfileError, match="differs"):
        hw.DeviceProfile(name="x", kind="mcu", sram_bytes=1, sources={"sram_bytes": q})
    with pytest.raises(hw.ProfileError, match="kind"):
        hw.DeviceProfile(name="x", kind="tpu", sram_bytes=256 * KIB, sources={"sram_bytes": q})
    with pytest.raises(hw.ProfileError, match="dram_bytes"):
        hw.DeviceProfile(name="x", kind="laptop")
    with pytest.raises(ValueError, match="source"):
        hw.Quantity(1, "  ")
    with pytest.raises(TypeError):
        hw.Quantity("1", "datasheet")
    with pytest.raises(dataclasses.FrozenInstanceError):
        ok.sram_bytes = 1
    with pytest.raises(TypeError):
        ok.sources["sram_bytes"] = q


def test_variant_changes_numbers_with_their_source():
    f746 = hw.device("stm32f746")
    big = f746.variant("f746-512k", sram_bytes=512 * KIB, source="what-if")
    assert big.sram_bytes == 512 * KIB and big.sources["sram_bytes"].source == "what-if"
    assert big.flash_bytes == f746.flash_bytes and big.peak("int8") == f746.peak("int8")
    assert not f746.fit(400 * KIB).fits and big.fit(400 * KIB).fits


# ---------------------------------------------------------------- units


@pytest.mark.parametrize(
    ("nbytes", "text"),
    [(327680, "320 KiB"), (0, "0 B"), (1023, "1023 B"), (1024, "1 KiB"), (1536, "1.5 KiB"),
     (4 * 1024**3, "4 GiB"), (-80 * KIB, "-80 KiB"), (1_600_000, "1.53 MiB")],
)
def test_format_bytes(nbytes, text):
    assert units.format_bytes(nbytes) == text


def test_format_si_and_seconds():
    assert units.format_si(2.16e8, "Hz") == "216 MHz"
    assert units.format_si(4.3839e-7, "J/bit") == "438 nJ/bit"
    assert units.format_seconds(0.0123) == "12.3 ms"
    with pytest.raises(TypeError):
        units.format_bytes("320 KB")


# ---------------------------------------------------------------- fit


def test_fit_bytes_checks_sram_on_an_mcu_and_dram_elsewhere():
    f746 = hw.device("stm32f746")
    ok = f746.fit(200 * KIB)
    assert (ok.fits, ok.memory, ok.needed_bytes, ok.available_bytes) == (
        True, "sram", 204800, 327680)
    assert ok.headroom_bytes == 327680 - 204800 == 122880
    assert ok.step_time_s is None and ok.largest_category is None
    assert "fits stm32f746" in ok.verdict and "120 KiB free" in ok.verdict
    bad = f746.fit(400 * KIB)
    assert not bad.fits and bad.headroom_bytes == -81920
    assert "does not fit" in bad.verdict and "80 KiB short" in bad.verdict
    nano = hw.device("jetson-nano").fit(3 * 1024**3)
    assert nano.memory == "dram" and nano.headroom_bytes == 1024**3
    with pytest.raises(ValueError, match="whole number"):
        f746.fit(-1)
    with pytest.raises(TypeError, match="peak_bytes"):
        f746.fit("200 KiB")
    with pytest.raises(dataclasses.FrozenInstanceError):
        ok.fits = False


def test_fit_report_on_an_mcu_puts_frozen_weights_in_flash():
    rep = hw.device("stm32f746").fit(small_report())
    sram, flash = rep.checks
    # SRAM holds the peak minus the frozen weights: 770 - 580 = 190 KiB
    assert (sram.memory, sram.needed_bytes, sram.available_bytes) == ("sram", 190 * KIB, 327680)
    assert sram.headroom_bytes == 327680 - 194560 == 133120
    assert (flash.memory, flash.needed_bytes, flash.headroom_bytes) == (
        "flash", 580 * KIB, 1048576 - 593920)
    assert rep.fits and rep.memory == "sram" and rep.headroom_bytes == 133120  # the tighter one
    assert rep.largest_category == "weights"
    # too many frozen weights for 1 MiB of flash: flash is now what fails
    huge = small_report(by_category={"weights": 1300 * KIB, "activations": 40 * KIB},
                        peak_bytes=1340 * KIB, frozen_weight_bytes=1200 * KIB)
    rep = hw.device("stm32f746").fit(huge)
    assert not rep.fits and rep.memory == "flash"
    assert rep.headroom_bytes == 1048576 - 1200 * KIB == -180224
    # everything in SRAM when asked to
    rep = hw.device("stm32f746").fit(small_report(), weights_in_flash=False)
    assert [c.memory for c in rep.checks] == ["sram"]
    assert rep.headroom_bytes == 327680 - 770 * KIB == -460800


def _with_parts(saved_kib: int, **kw) -> StandInReport:
    # weights 600 KiB (580 frozen), saved activations, 50 KiB transient, 20 KiB gradients
    parts = {"weights": 600 * KIB, "saved activations": saved_kib * KIB,
             "transient": 50 * KIB, "gradients": 20 * KIB, "optimizer state": 0}
    return small_report(peak_bytes=sum(parts.values()), peak_components=parts,
                        peak_at="backward of conv1 (convolution)", **kw)


def test_verdict_names_the_component_that_breaks_the_budget():
    f746 = hw.device("stm32f746")  # 320 KiB SRAM
    ok = f746.fit(_with_parts(100))  # SRAM: 20 + 100 + 50 + 20 = 190 KiB of 320
    assert ok.fits and ok.needed_bytes == 190 * KIB
    assert ok.peak_components == {"weights": 20 * KIB, "saved activations": 100 * KIB,
                                  "transient": 50 * KIB, "gradients": 20 * KIB,
                                  "optimizer state": 0}
    assert ok.peak_component == "saved activations"
    assert ("at the peak (backward of conv1 (convolution)) saved activations take 100 KiB "
            "of the 190 KiB in SRAM") in ok.verdict
    assert "largest category" not in ok.verdict and "try" not in ok.verdict
    bad = f746.fit(_with_parts(300))  # SRAM: 20 + 300 + 50 + 20 = 390 KiB > 320
    assert not bad.fits and sum(bad.peak_components.values()) == bad.needed_bytes == 390 * KIB
    assert ("saved activations take 300 KiB of the 390 KiB in SRAM; the budget is 320 KiB, "
            "the rest alone (90 KiB) fits; try train fewer layers") in bad.verdict
    worse = f746.fit(_with_parts(600))  # the rest (90 KiB) fits, 690 KiB in all does not
    assert "600 KiB of the 690 KiB" in worse.verdict
    transient = f746.fit(small_report(  # the transient buffers are the largest part
        peak_bytes=1000 * KIB, peak_components={
            "weights": 600 * KIB, "saved activations": 0, "transient": 380 * KIB,
            "gradients": 20 * KIB, "optimizer state": 0}))
    assert transient.peak_component == "transient" and not transient.fits
    assert "transient buffers (the input and output of the op being computed) take 380 KiB" \
        in transient.verdict and "a smaller batch or input resolution" in transient.verdict


def test_components_in_dram_add_the_allocators_kernel_scratch():
    report = _with_parts(100, allocator_peak_bytes=800 * KIB)  # tensor peak 770 KiB
    rep = hw.device("raspberry-pi-4").fit(report)
    assert rep.peak == "allocator" and rep.needed_bytes == 800 * KIB
    assert rep.peak_components["kernel scratch"] == 30 * KIB
    assert rep.peak_components["weights"] == 600 * KIB  # all of them in DRAM
    assert sum(rep.peak_components.values()) == rep.needed_bytes
    assert "weights take 600 KiB of the 800 KiB in DRAM" in rep.verdict
    # a report without components (a measurement, a byte count) keeps the category line
    assert "largest category: weights" in hw.device("raspberry-pi-4").fit(small_report()).verdict
    assert hw.device("raspberry-pi-4").fit(123).peak_components == {}


def test_the_verdict_of_a_real_estimate_names_the_forward_buffers():
    model = odt.models.create("mbv2-tiny").train()
    x = odt.models.example_input(model, batch_size=8)
    est = odt.estimate(model, x, odt.plan(model, "bias-only", norm_stats="frozen"),
                       engine="lean")
    fit = hw.device("stm32f746").fit(est)
    assert not fit.fits and fit.peak_component == "transient"
    assert sum(fit.peak_components.values()) == fit.needed_bytes
    assert fit.peak_components["weights"] == est.by_category["weights"] - est.frozen_weight_bytes
    assert f"at the peak ({est.peak_at}) transient buffers" in fit.verdict


def test_fit_report_elsewhere_needs_the_whole_peak_in_dram():
    rep = hw.device("raspberry-pi-4").fit(small_report())
    assert [c.memory for c in rep.checks] == ["dram"]
    assert rep.needed_bytes == 770 * KIB and rep.headroom_bytes == 4 * 1024**3 - 770 * KIB
    with pytest.raises(ValueError, match="only microcontrollers"):
        hw.device("raspberry-pi-4").fit(small_report(), weights_in_flash=True)


def test_fit_on_an_mcu_without_a_known_flash_size_says_so():
    rep = hw.device("esp32-s3").fit(small_report())
    assert [c.memory for c in rep.checks] == ["sram"] and rep.needed_bytes == 770 * KIB
    assert not rep.fits and "flash size unknown" in rep.verdict
    with pytest.raises(hw.UnknownSpecError, match="flash"):
        hw.device("esp32-s3").fit(small_report(), weights_in_flash=True)


def test_fit_rejects_inconsistent_reports():
    with pytest.raises(ValueError, match="exceeds"):
        hw.device("stm32f746").fit(small_report(frozen_weight_bytes=900 * KIB))
    with pytest.raises(ValueError, match="whole number"):
        hw.device("stm32f746").fit(small_report(peak_bytes=-5))


def test_step_time_is_the_roofline_of_the_report():
    f746 = hw.device("stm32f746")
    # 216e6 MACs at 216e6 MAC/s fp32 take 1 s; 2 x 770 KiB moved take under 1 ms
    report = small_report(forward_macs=72_000_000, backward_macs=144_000_000)
    rep = f746.fit(report)
    assert rep.step_time_s == pytest.approx(1.0) and rep.dtype == "fp32"
    assert "one step ~1 s (fp32 roofline)" in rep.verdict
    # the report's precision picks the peak: int8 runs at 432e6 MAC/s
    assert f746.fit(small_report(forward_macs=72_000_000, backward_macs=144_000_000,
                                 precision="int8")).step_time_s == pytest.approx(0.5)
    assert f746.fit(report, dtype="int8").step_time_s == pytest.approx(0.5)
    # memory-bound: few MACs, so bytes / bandwidth wins
    light = small_report(forward_macs=1, backward_macs=1)
    assert f746.fit(light).step_time_s == pytest.approx(2 * 770 * KIB / 1.728e9)
    # unknown numbers give no time, and say why
    assert f746.fit(small_report()).step_time_s is None
    rep = f746.fit(report, dtype="fp16")
    assert rep.step_time_s is None and "no fp16 peak" in rep.verdict
    with pytest.raises(ValueError, match="fp32"):
        f746.fit(report, dtype="fp64")


def test_roofline_hand_computed():
    f746 = hw.device("stm32f746")  # int8: 4.32e8 MAC/s, 1.728e9 B/s
    assert f746.roofline_s(4.32e8, 3.456e9, dtype="int8") == pytest.approx(2.0)  # memory-bound
    assert f746.roofline_s(8.64e8, 1.728e9, dtype="int8") == pytest.approx(2.0)  # compute-bound
    assert f746.roofline_s(2.16e8, 0) == pytest.approx(1.0)  # fp32 default
    with pytest.raises(hw.UnknownSpecError, match="fp16.*known dtypes: int8, fp32"):
        f746.roofline_s(1, 1, dtype="fp16")
    with pytest.raises(hw.UnknownSpecError, match="bandwidth"):
        hw.device("phone-snapdragon-7-gen-1").roofline_s(1, 1)
    with pytest.raises(ValueError, match="macs"):
        f746.roofline_s(-1, 0)
    with pytest.raises(ValueError, match="int8"):
        f746.roofline_s(1, 1, dtype="int4")


def test_fit_report_checks_its_own_consistency():
    check = hw.MemoryCheck("sram", 10, 5)
    with pytest.raises(ValueError, match="fits"):
        hw.FitReport(device="x", fits=True, memory="sram", needed_bytes=10, available_bytes=5,
                     headroom_bytes=-5, checks=(check,))
    with pytest.raises(ValueError, match="tightest"):
        hw.FitReport(device="x", fits=False, memory="sram", needed_bytes=10, available_bytes=5,
                     headroom_bytes=5, checks=(check,))
    with pytest.raises(ValueError, match="memory"):
        hw.MemoryCheck("l2", 1, 1)


# ---------------------------------------------------------------- links


def test_link_transfer_time_hand_computed():
    lora = hw.link("lorawan")  # 5470 bit/s, 1 % duty cycle
    assert lora.transfer_s(1000) == pytest.approx(8000 / 5470 / 0.01)  # 146.25 s
    ble = hw.link("ble")  # 1.438 Mbit/s after a 7.5 ms connection interval
    assert ble.transfer_s(1000) == pytest.approx(0.0075 + 8000 / 1.438e6)
    assert hw.link("ethernet").transfer_s(0) == 0.0
    with pytest.raises(ValueError, match="nbytes"):
        ble.transfer_s(-1)


def test_link_energy_hand_computed():
    assert hw.link("ble").energy_j(1000) == pytest.approx(8000 * 1e-8)
    assert hw.link("lte").energy_j(1_000_000) == pytest.approx(8e6 * 438.39e-9)
    with pytest.raises(hw.UnknownSpecError, match="lorawan"):
        hw.link("lorawan").energy_j(10)
    # an MCU radio link is orders of magnitude slower than Ethernet for the same update
    assert hw.link("nb-iot").transfer_s(100_000) > 1000 * hw.link("ethernet").transfer_s(100_000)


# ---------------------------------------------------------------- figures


def _points(ax) -> int:
    return sum(len(line.get_xdata()) for line in ax.get_lines())


def test_memory_catalogue_draws_one_point_per_known_memory():
    fig = catalogue.memory_catalogue()
    try:
        assert isinstance(fig, Figure)
        ax = fig.axes[0]
        expected = sum(1 for n in hw.devices() for m in ("sram", "dram", "flash")
                       if getattr(hw.device(n), f"{m}_bytes"))
        assert _points(ax) == expected and not ax.patches  # points on a log axis, no bars
        # three series, each its own colour and marker; text readable at 100 dpi
        looks = [(matplotlib.colors.to_hex(line.get_color()), line.get_marker())
                 for line in ax.get_lines()]
        assert len(looks) == 3 and len(set(looks)) == 3
        assert len({c for c, _ in looks}) == 3 and len({m for _, m in looks}) == 3
        assert min(t.get_fontsize() for t in fig.findobj(matplotlib.text.Text)
                   if t.get_text()) * 100 / 72 >= 9
        sizes = {t.get_text() for t in ax.texts}
        assert {"320 KiB", "64 GiB", "256 KiB"} <= sizes
        # every memory whose size no source gives is named in its row, not dropped
        unknown = sorted(f"{'flash' if m == 'flash' else m.upper()} ? unknown"
                         for n in hw.devices() for m in ("sram", "dram", "flash")
                         if getattr(hw.device(n), f"{m}_bytes") is None)
        assert unknown and sorted(t.get_text() for t in ax.texts
                                  if t.get_text().endswith("? unknown")) == unknown
        assert ax.get_xscale() == "log"
        assert {t.get_text() for t in ax.get_yticklabels()} == set(hw.devices())
    finally:
        plt.close(fig)
    fig = odt.viz.memory_catalogue(["stm32f746", "jetson-nano"])
    try:
        assert _points(fig.axes[0]) == 2 + 2  # SRAM + flash, DRAM + eMMC
    finally:
        plt.close(fig)


def test_device_comparison_colours_fits_and_misses():
    reports = [hw.device("stm32f746").fit(small_report()),
               hw.device("nrf52840").fit(400 * KIB)]
    fig = catalogue.device_comparison(reports)
    try:
        ax = fig.axes[0]
        rows = sum(len(r.checks) for r in reports)  # sram + flash, then sram
        assert rows == 3 and len(ax.patches) == 2 * rows
        needed = ax.patches[rows:]
        fits = [matplotlib.colors.to_hex(p.get_facecolor()) for p in needed]
        assert fits == [catalogue.FITS_COLOUR, catalogue.FITS_COLOUR, catalogue.MISSES_COLOUR]
    finally:
        plt.close(fig)
    fig = catalogue.device_comparison(small_report(), devices=["stm32f746", "rp2040"])
    try:
        assert len(fig.axes[0].patches) == 2 * 4
    finally:
        plt.close(fig)
    fig = catalogue.device_comparison({"stm32f746": 100 * KIB, "jetson-nano": 100 * KIB})
    plt.close(fig)
    with pytest.raises(TypeError, match="FitReport"):
        catalogue.device_comparison([1, 2])
