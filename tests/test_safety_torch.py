"""PyTorch checkpoints, scanned without torch: the committed fixtures (made and loaded back with
torch 2.13 by scripts/make_torch_fixtures.py) and hand-built variants of them.

Each test names the mechanism it proves: torch's rebuild globals are allowed only inside
torch's formats, each persistent id must name a storage the file holds with the size it says,
each tensor must lie inside its storage, and everything else torch.save does not write is
refused. Nothing is loaded here.
"""

from __future__ import annotations

import io
import pickle
import struct
import tarfile
import zipfile
from pathlib import Path

import pytest

from integrity.cli import main
from integrity.safety.loader import UnsafeModelError, load_model
from integrity.safety.scanner import ScanResult, scan_path
from integrity.safety.torch_checkpoint import MAGIC_NUMBER, TORCH_GLOBALS

FIXTURES = Path(__file__).parent / "data" / "torch"
SAFE = {
    "state_dict.pt": "torch",
    "state_dict_protocol4.pt": "torch",
    "checkpoint_mixed.pt": "torch",
    "legacy_state_dict.pt": "torch-legacy",
    "legacy_mixed.pt": "torch-legacy",
    "legacy_tar.pt": "torch-tar",
}


def codes(result: ScanResult) -> set[str]:
    return {f.code for f in result.findings}


def scan_bytes(tmp_path: Path, data: bytes, name: str = "model.pt") -> ScanResult:
    path = tmp_path / name
    path.write_bytes(data)
    return scan_path(path)


# ---- hand-built pickles (protocol 2 opcodes, as torch.save writes them)


def g(module: str, name: str) -> bytes:
    return b"c" + module.encode() + b"\n" + name.encode() + b"\n"


def u(text: str) -> bytes:
    raw = text.encode()
    return b"X" + struct.pack("<I", len(raw)) + raw


def i(n: int) -> bytes:
    return b"J" + struct.pack("<i", n)


def tup(*parts: bytes) -> bytes:
    return b"(" + b"".join(parts) + b"t"


def pid(storage: bytes = g("torch", "FloatStorage"), key: str = "0", numel: int = 6) -> bytes:
    return tup(u("storage"), storage, u(key), u("cpu"), i(numel)) + b"Q"


HOOKS = g("collections", "OrderedDict") + b")R"
SYSTEM = b"\x80\x02" + g("posix", "system") + tup(u("true")) + b"R."  # never loaded here


def tensor(
    storage_pid: bytes | None = None,
    offset: int = 0,
    size: tuple[int, ...] = (2, 3),
    stride: tuple[int, ...] = (3, 1),
    extra: bytes = b"",
) -> bytes:
    args = (
        (storage_pid or pid())
        + i(offset)
        + tup(*map(i, size))
        + tup(*map(i, stride))
        + b"\x89"
        + HOOKS
        + extra
    )
    return g("torch._utils", "_rebuild_tensor_v2") + b"(" + args + b"tR"


def obj(*items: tuple[str, bytes]) -> bytes:
    return b"\x80\x02}(" + b"".join(u(k) + v for k, v in items) + b"u."


def torch_zip(data_pkl: bytes, storages: dict[str, bytes] | None = None) -> bytes:
    """The zip layout torch.save writes: data.pkl, data/<key>, version under one folder."""
    storages = {"0": bytes(24)} if storages is None else storages
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("archive/data.pkl", data_pkl)
        for key, raw in storages.items():
            archive.writestr(f"archive/data/{key}", raw)
        archive.writestr("archive/version", b"3\n")
    return buffer.getvalue()


# ---------------------------------------------------------------- the committed fixtures


@pytest.mark.parametrize("name", sorted(SAFE))
def test_checkpoints_torch_save_writes_are_safe(name: str) -> None:
    result = scan_path(FIXTURES / name)
    assert result.safe, [f.message for f in result.findings]
    assert result.format == SAFE[name]
    used = {(g.module, g.name) for g in result.globals_used}
    assert used & set(TORCH_GLOBALS)  # torch's own globals were met and allowed


def test_whole_module_is_refused_for_naming_the_users_class() -> None:
    for name in ("whole_module.pt", "legacy_whole_module.pt"):
        result = scan_path(FIXTURES / name)
        refused = {f.global_name for f in result.findings if f.code == "disallowed-global"}
        assert "torch.nn.modules.container.Sequential" in refused, name


def test_torchscript_archive_is_unscannable() -> None:
    result = scan_path(FIXTURES / "torchscript.pt")
    assert result.format == "torchscript" and "unscannable" in codes(result)


@pytest.mark.parametrize("name", ["evil_os_system.pt", "legacy_evil_os_system.pt"])
def test_os_system_inside_the_checkpoint_pickle_is_refused(name: str) -> None:
    result = scan_path(FIXTURES / name)
    assert "posix.system" in {f.global_name for f in result.findings}


def test_persistent_id_naming_a_missing_storage_is_refused() -> None:
    result = scan_path(FIXTURES / "missing_storage.pt")
    assert "persistent-id" in codes(result)
    assert "does not hold" in result.findings[0].message


def test_persistent_id_whose_storage_is_short_is_refused() -> None:
    result = scan_path(FIXTURES / "short_storage.pt")
    assert "persistent-id" in codes(result) and "holds 47" in result.findings[0].message


def test_scan_and_verify_report_torch_findings(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["scan", str(FIXTURES / "state_dict.pt")]) == 0
    assert main(["scan", str(FIXTURES / "evil_os_system.pt")]) == 1
    assert "posix.system" in capsys.readouterr().out


def test_the_loader_scans_torch_files_but_does_not_load_them() -> None:
    for name in ("state_dict.pt", "legacy_state_dict.pt", "legacy_tar.pt"):
        with pytest.raises(UnsafeModelError, match="not loaded"):
            load_model(FIXTURES / name)


# ---------------------------------------------------------------- torch globals stay in torch


def test_torch_rebuild_globals_are_refused_outside_torch_formats(tmp_path: Path) -> None:
    plain = b"\x80\x02" + g("torch._utils", "_rebuild_tensor_v2") + b"."
    result = scan_bytes(tmp_path, plain, "model.pkl")
    assert "disallowed-global" in codes(result)
    # ...and in a plain .pkl member of a zip that is not torch's layout.
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("model.pkl", obj(("w", tensor())))
    result = scan_bytes(tmp_path, buffer.getvalue(), "bundle.zip")
    assert "disallowed-global" in codes(result) or "persistent-id" in codes(result)


def test_hand_built_checkpoint_matches_what_torch_writes(tmp_path: Path) -> None:
    # The control for the tests below: the builder makes a checkpoint the scanner passes.
    result = scan_bytes(tmp_path, torch_zip(obj(("w", tensor()))))
    assert result.safe and result.format == "torch", result.findings


# ---------------------------------------------------------------- persistent ids


@pytest.mark.parametrize(
    ("case", "storage_pid"),
    [
        ("storage_type_not_a_storage_class", pid(storage=g("builtins", "dict"))),
        ("five_fields_expected", tup(u("storage"), g("torch", "FloatStorage"), u("0")) + b"Q"),
        (
            "unknown_typename",
            tup(u("module"), g("torch", "FloatStorage"), u("0"), u("cpu"), i(6)) + b"Q",
        ),
        (
            "location_not_a_device",
            tup(u("storage"), g("torch", "FloatStorage"), u("0"), u("cpu; rm -rf /"), i(6)) + b"Q",
        ),
        ("negative_numel", pid(numel=-1)),
        ("numel_disagrees_with_member", pid(numel=5)),
        ("key_names_no_member", pid(key="9")),
        ("text_persid_is_not_a_tuple", b"P0\n"),
    ],
)
def test_persistent_id_torch_does_not_write_is_refused(
    case: str, storage_pid: bytes, tmp_path: Path
) -> None:
    result = scan_bytes(tmp_path, torch_zip(obj(("w", tensor(storage_pid)))))
    assert "persistent-id" in codes(result), (case, result.findings)


def test_storage_lookup_ignores_case_as_pytorch_does(tmp_path: Path) -> None:
    data = torch_zip(
        obj(
            ("w", tensor(pid(key="A"))),
        ),
        storages={"a": bytes(24)},
    )
    result = scan_bytes(tmp_path, data)
    assert result.safe, result.findings


# ---------------------------------------------------------------- state validators


@pytest.mark.parametrize(
    ("case", "pickled"),
    [
        ("view_past_the_storage_end", tensor(size=(7,), stride=(1,))),
        ("offset_past_the_storage_end", tensor(offset=5, size=(2,), stride=(1,))),
        ("stride_past_the_storage_end", tensor(size=(2, 3), stride=(4, 1))),
        ("size_stride_lengths_differ", tensor(size=(2, 3), stride=(1,))),
        ("tensor_metadata_set", tensor(extra=b"}" + u("neg") + b"\x88s")),
    ],
)
def test_tensor_outside_its_storage_is_unsafe_state(
    case: str, pickled: bytes, tmp_path: Path
) -> None:
    result = scan_bytes(tmp_path, torch_zip(obj(("w", pickled))))
    assert "unsafe-state" in codes(result), (case, result.findings)


def test_calling_a_storage_class_is_refused(tmp_path: Path) -> None:
    # torch.save names storage classes in persistent ids; calling one allocates at will.
    call = g("torch", "FloatStorage") + tup(i(10**9)) + b"R"
    result = scan_bytes(tmp_path, torch_zip(obj(("s", call))))
    assert "unsafe-state" in codes(result)


def test_build_on_a_rebuilt_tensor_is_refused(tmp_path: Path) -> None:
    # BUILD calls Tensor.__setstate__, which re-points the tensor at any storage.
    built = tensor() + tup(pid(), i(0), tup(i(6)), tup(i(1))) + b"b"
    result = scan_bytes(tmp_path, torch_zip(obj(("w", built))))
    assert "unsafe-state" in codes(result)


def test_parameter_must_wrap_a_rebuilt_tensor(tmp_path: Path) -> None:
    good = g("torch._utils", "_rebuild_parameter") + tup(tensor(), b"\x88", HOOKS) + b"R"
    assert scan_bytes(tmp_path, torch_zip(obj(("p", good)))).safe
    bad = g("torch._utils", "_rebuild_parameter") + tup(u("x"), b"\x88", HOOKS) + b"R"
    assert "unsafe-state" in codes(scan_bytes(tmp_path, torch_zip(obj(("p", bad)))))


def test_backward_hooks_must_be_an_empty_ordered_dict(tmp_path: Path) -> None:
    hooked = tensor().replace(HOOKS, g("builtins", "print") + b")R")
    result = scan_bytes(tmp_path, torch_zip(obj(("w", hooked))))
    assert not result.safe


def test_device_and_size_accept_only_what_torch_writes(tmp_path: Path) -> None:
    good = g("torch", "device") + tup(u("cuda"), i(0)) + b"R"
    assert scan_bytes(tmp_path, torch_zip(obj(("d", good)))).safe
    bad = g("torch", "device") + tup(u("cuda\n;x")) + b"R"
    assert "unsafe-state" in codes(scan_bytes(tmp_path, torch_zip(obj(("d", bad)))))
    bad_size = g("torch", "Size") + tup(tup(i(-1))) + b"R"
    assert "unsafe-state" in codes(scan_bytes(tmp_path, torch_zip(obj(("s", bad_size)))))


def test_case_colliding_data_pkl_names_are_all_scanned(tmp_path: Path) -> None:
    # PyTorch's reader finds "archive/DATA.PKL" for "archive/data.pkl" (measured with 2.13).
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("archive/version", b"3\n")
        archive.writestr("archive/data.pkl", obj(("w", tensor())))
        archive.writestr("archive/data/0", bytes(24))
        archive.writestr("archive/DATA.PKL", SYSTEM)
    result = scan_bytes(tmp_path, buffer.getvalue())
    assert "duplicate-member" in codes(result)
    assert "posix.system" in {f.global_name for f in result.findings}


def test_data_pkl_trailing_data_is_a_finding(tmp_path: Path) -> None:
    result = scan_bytes(tmp_path, torch_zip(obj(("w", tensor())) + b"junk"))
    assert "trailing-data" in codes(result)


# ---------------------------------------------------------------- legacy format


def legacy(
    main_pickle: bytes, keys: list[str], records: bytes, protocol_pickle: bytes = b""
) -> bytes:
    return (
        pickle.dumps(MAGIC_NUMBER, protocol=2)
        + (protocol_pickle or pickle.dumps(1001, protocol=2))
        + pickle.dumps({"little_endian": True}, protocol=2)
        + main_pickle
        + pickle.dumps(keys, protocol=2)
        + records
    )


def legacy_pid(key: str = "0", numel: int = 6, view: bytes = b"N") -> bytes:
    return tup(u("storage"), g("torch", "FloatStorage"), u(key), u("cpu"), i(numel), view) + b"Q"


RECORD = struct.pack("<q", 6) + bytes(24)


def test_hand_built_legacy_file_is_safe(tmp_path: Path) -> None:
    data = legacy(obj(("w", tensor(legacy_pid()))), ["0"], RECORD)
    result = scan_bytes(tmp_path, data)
    assert result.safe and result.format == "torch-legacy", result.findings


@pytest.mark.parametrize(
    ("case", "data", "code"),
    [
        (
            "storage_record_missing",
            legacy(obj(("w", tensor(legacy_pid()))), [], b""),
            "persistent-id",
        ),
        (
            "record_count_disagrees",
            legacy(obj(("w", tensor(legacy_pid()))), ["0"], struct.pack("<q", 7) + bytes(28)),
            "malformed",
        ),
        (
            "record_cut_short",
            legacy(obj(("w", tensor(legacy_pid()))), ["0"], RECORD[:-1]),
            "truncated",
        ),
        (
            "key_list_names_undeclared",
            legacy(obj(("w", tensor(legacy_pid()))), ["0", "1"], RECORD * 2),
            "malformed",
        ),
        (
            "data_after_the_storages",
            legacy(obj(("w", tensor(legacy_pid()))), ["0"], RECORD + b"x"),
            "trailing-data",
        ),
        (
            "view_outside_storage",
            legacy(obj(("w", tensor(legacy_pid(view=tup(u("v"), i(4), i(4)))))), ["0"], RECORD),
            "persistent-id",
        ),
        (
            "payload_in_the_protocol_pickle",
            legacy(obj(), [], b"", SYSTEM),
            "disallowed-global",
        ),
        (
            "payload_in_the_key_list",
            legacy(obj(), [], b"")[: -len(pickle.dumps([], protocol=2))] + SYSTEM,
            "disallowed-global",
        ),
    ],
)
def test_legacy_file_torch_does_not_write_is_refused(
    case: str, data: bytes, code: str, tmp_path: Path
) -> None:
    result = scan_bytes(tmp_path, data)
    assert result.format == "torch-legacy"
    assert code in codes(result), (case, result.findings)


def test_a_lone_magic_number_is_not_mistaken_for_more(tmp_path: Path) -> None:
    # pickle.load and joblib.load read the first pickle only; torch.load fails without the
    # protocol pickle: nothing else runs.
    result = scan_bytes(tmp_path, pickle.dumps(MAGIC_NUMBER, protocol=2))
    assert result.safe and result.format == "torch-legacy"
    result = scan_bytes(tmp_path, pickle.dumps(MAGIC_NUMBER + 1, protocol=2))
    assert result.format == "pickle"


# ---------------------------------------------------------------- legacy tar


def tar_of(records: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in records.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def fixture_tar_records() -> dict[str, bytes]:
    with tarfile.open(FIXTURES / "legacy_tar.pt") as tar:
        out = {}
        for member in tar.getmembers():
            stream = tar.extractfile(member)
            assert stream is not None
            out[member.name] = stream.read()
        return out


def test_legacy_tar_pickle_with_a_payload_is_refused(tmp_path: Path) -> None:
    records = fixture_tar_records()
    records["pickle"] = SYSTEM
    result = scan_bytes(tmp_path, tar_of(records))
    assert result.format == "torch-tar"
    assert "posix.system" in {f.global_name for f in result.findings}


def test_legacy_tar_persistent_id_must_name_a_record(tmp_path: Path) -> None:
    records = fixture_tar_records()
    records["pickle"] = records["pickle"].replace(b"11", b"12")
    result = scan_bytes(tmp_path, tar_of(records))
    assert "persistent-id" in codes(result)


def test_legacy_tar_tensor_outside_its_storage_is_refused(tmp_path: Path) -> None:
    records = fixture_tar_records()
    tensors = records["tensors"]
    sizes = struct.pack("<5q", 2, 3, 3, 1, 0)
    records["tensors"] = tensors.replace(sizes, struct.pack("<5q", 3, 3, 3, 1, 0))
    result = scan_bytes(tmp_path, tar_of(records))
    assert "unsafe-state" in codes(result)


def test_legacy_tar_storages_pickles_are_scanned(tmp_path: Path) -> None:
    records = fixture_tar_records()
    records["storages"] = SYSTEM
    result = scan_bytes(tmp_path, tar_of(records))
    assert "posix.system" in {f.global_name for f in result.findings}
