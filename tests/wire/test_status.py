"""Status codes, their mappings, grpc-message encoding, google.rpc.Status bytes, RpcError."""

from __future__ import annotations

import pickle
from typing import Any

import h2.errors
import pytest
from google.protobuf import any_pb2, descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.message import DecodeError
from hypothesis import given
from hypothesis import strategies as st

from wire.errors import ProtocolMisuse, RpcError
from wire.metadata import Metadata
from wire.status import (
    AnyMessage,
    StatusCode,
    StatusDetails,
    decode_grpc_message,
    encode_grpc_message,
    parse_grpc_status,
    status_from_http_status,
    status_from_rst_stream,
)

# The table of grpc doc/statuscodes.md, written out independently of the module.
CANONICAL_CODES = [
    ("OK", 0),
    ("CANCELLED", 1),
    ("UNKNOWN", 2),
    ("INVALID_ARGUMENT", 3),
    ("DEADLINE_EXCEEDED", 4),
    ("NOT_FOUND", 5),
    ("ALREADY_EXISTS", 6),
    ("PERMISSION_DENIED", 7),
    ("RESOURCE_EXHAUSTED", 8),
    ("FAILED_PRECONDITION", 9),
    ("ABORTED", 10),
    ("OUT_OF_RANGE", 11),
    ("UNIMPLEMENTED", 12),
    ("INTERNAL", 13),
    ("UNAVAILABLE", 14),
    ("DATA_LOSS", 15),
    ("UNAUTHENTICATED", 16),
]


def test_status_codes_match_the_grpc_table() -> None:
    assert [(code.name, code.value) for code in StatusCode] == CANONICAL_CODES


# --- grpc-status ---


@pytest.mark.parametrize(
    ("raw", "expected"),
    [("0", StatusCode.OK), (b"14", StatusCode.UNAVAILABLE), ("16", StatusCode.UNAUTHENTICATED)],
)
def test_grpc_status_is_parsed(raw: str | bytes, expected: StatusCode) -> None:
    assert parse_grpc_status(raw) is expected


@pytest.mark.parametrize("raw", ["17", "99", "4294967295"])
def test_unknown_grpc_status_number_reads_as_unknown(raw: str) -> None:
    assert parse_grpc_status(raw) is StatusCode.UNKNOWN


@pytest.mark.parametrize("raw", ["", "-1", "+1", " 1", "1 ", "1a", "\u0663", "99999999999"])
def test_malformed_grpc_status_is_refused(raw: str) -> None:
    with pytest.raises(ValueError):
        parse_grpc_status(raw)


# --- grpc-message ---


@pytest.mark.parametrize(
    ("message", "encoded"),
    [
        ("connection lost", "connection lost"),
        ("", ""),
        ("100%", "100%25"),
        ("line\nbreak", "line%0Abreak"),
        ("tab\there", "tab%09here"),
        ("caf\u00e9", "caf%C3%A9"),
        ("\x7f", "%7F"),
        ("\u2603 snow", "%E2%98%83 snow"),
        ("~ and space", "~ and space"),
    ],
)
def test_grpc_message_percent_encoding(message: str, encoded: str) -> None:
    assert encode_grpc_message(message) == encoded


def test_grpc_message_lone_surrogate_is_sent_as_question_mark() -> None:
    assert encode_grpc_message("bad \ud800 text") == "bad ? text"


@pytest.mark.parametrize(
    ("value", "decoded"),
    [
        ("%41", "A"),
        ("caf%c3%a9", "caf\u00e9"),  # lower-case hex is accepted too
        (b"caf%C3%A9", "caf\u00e9"),
        ("%", "%"),
        ("100%", "100%"),
        ("%4", "%4"),
        ("%zz", "%zz"),
        ("%%41", "%A"),
        ("% 1", "% 1"),
        ("%+1", "%+1"),
        ("%FF", "\ufffd"),  # not UTF-8: replaced, never raised
        (b"raw \xff byte", "raw \ufffd byte"),
    ],
)
def test_grpc_message_decoding_never_fails(value: str | bytes, decoded: str) -> None:
    assert decode_grpc_message(value) == decoded


@given(st.text())
def test_grpc_message_round_trips(message: str) -> None:
    encoded = encode_grpc_message(message)
    assert all(0x20 <= ord(ch) <= 0x7E for ch in encoded)
    assert decode_grpc_message(encoded) == message
    assert decode_grpc_message(encoded.encode("ascii")) == message


@given(st.binary())
def test_grpc_message_decoder_accepts_any_bytes(value: bytes) -> None:
    assert isinstance(decode_grpc_message(value), str)


# --- status without grpc-status, and from RST_STREAM ---


@pytest.mark.parametrize(
    ("http_status", "expected"),
    [
        (400, StatusCode.INTERNAL),
        (401, StatusCode.UNAUTHENTICATED),
        (403, StatusCode.PERMISSION_DENIED),
        (404, StatusCode.UNIMPLEMENTED),
        (429, StatusCode.UNAVAILABLE),
        (502, StatusCode.UNAVAILABLE),
        (503, StatusCode.UNAVAILABLE),
        (504, StatusCode.UNAVAILABLE),
        (200, StatusCode.UNKNOWN),
        (415, StatusCode.UNKNOWN),
        (500, StatusCode.UNKNOWN),
    ],
)
def test_status_from_http_status(http_status: int, expected: StatusCode) -> None:
    assert status_from_http_status(http_status) is expected


@pytest.mark.parametrize(
    ("error_code", "expected"),
    [
        (h2.errors.ErrorCodes.CANCEL, StatusCode.CANCELLED),
        (h2.errors.ErrorCodes.REFUSED_STREAM, StatusCode.UNAVAILABLE),
        (h2.errors.ErrorCodes.ENHANCE_YOUR_CALM, StatusCode.RESOURCE_EXHAUSTED),
        (h2.errors.ErrorCodes.INADEQUATE_SECURITY, StatusCode.PERMISSION_DENIED),
        (h2.errors.ErrorCodes.FLOW_CONTROL_ERROR, StatusCode.RESOURCE_EXHAUSTED),
        (h2.errors.ErrorCodes.NO_ERROR, StatusCode.INTERNAL),
        (h2.errors.ErrorCodes.PROTOCOL_ERROR, StatusCode.INTERNAL),
        (h2.errors.ErrorCodes.INTERNAL_ERROR, StatusCode.INTERNAL),
        (h2.errors.ErrorCodes.STREAM_CLOSED, StatusCode.INTERNAL),
        (0x99, StatusCode.INTERNAL),
    ],
)
def test_status_from_rst_stream(error_code: int, expected: StatusCode) -> None:
    assert status_from_rst_stream(error_code) is expected
    assert status_from_rst_stream(int(error_code)) is expected


# --- google.rpc.Status bytes ---


def _status_class_built_from_descriptors() -> Any:
    """google.rpc.Status made with protobuf's descriptor API, in a private pool."""
    pool = descriptor_pool.DescriptorPool()
    pool.Add(descriptor_pb2.FileDescriptorProto.FromString(any_pb2.DESCRIPTOR.serialized_pb))
    field = descriptor_pb2.FieldDescriptorProto
    file_proto = descriptor_pb2.FileDescriptorProto(
        name="google/rpc/status.proto",
        package="google.rpc",
        syntax="proto3",
        dependency=["google/protobuf/any.proto"],
    )
    status = file_proto.message_type.add(name="Status")
    status.field.add(name="code", number=1, type=field.TYPE_INT32, label=field.LABEL_OPTIONAL)
    status.field.add(name="message", number=2, type=field.TYPE_STRING, label=field.LABEL_OPTIONAL)
    status.field.add(
        name="details",
        number=3,
        type=field.TYPE_MESSAGE,
        label=field.LABEL_REPEATED,
        type_name=".google.protobuf.Any",
    )
    pool.Add(file_proto)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("google.rpc.Status"))


def _status_classes() -> list[Any]:
    classes = [_status_class_built_from_descriptors()]
    try:
        from google.rpc import status_pb2  # from grpcio-status (a dev dependency)
    except ImportError:
        pass
    else:
        classes.append(status_pb2.Status)
    return classes


STATUS_CLASSES = _status_classes()

any_messages = st.builds(AnyMessage, type_url=st.text(max_size=40), value=st.binary(max_size=60))
status_details = st.builds(
    StatusDetails,
    code=st.integers(min_value=-(2**31), max_value=2**31 - 1),
    message=st.text(max_size=80),
    details=st.lists(any_messages, max_size=4).map(tuple),
)


def _reference_message(cls: Any, details: StatusDetails) -> Any:
    message = cls(code=details.code, message=details.message)
    for item in details.details:
        packed = message.details.add()
        packed.type_url = item.type_url
        packed.value = item.value
    return message


@pytest.mark.parametrize("status_cls", STATUS_CLASSES)
@given(details=status_details)
def test_status_details_bytes_match_protobuf(status_cls: Any, details: StatusDetails) -> None:
    reference = _reference_message(status_cls, details)
    assert details.to_bytes() == reference.SerializeToString(deterministic=True)
    assert StatusDetails.from_bytes(reference.SerializeToString()) == details
    assert status_cls.FromString(details.to_bytes()) == reference


def test_status_details_with_real_content() -> None:
    details = StatusDetails(
        code=StatusCode.INVALID_ARGUMENT,
        message="name is required",
        details=(AnyMessage("type.googleapis.com/google.rpc.BadRequest", b"\n\x04\n\x02id"),),
    )
    for status_cls in STATUS_CLASSES:
        parsed = status_cls.FromString(details.to_bytes())
        assert parsed.code == 3
        assert parsed.message == "name is required"
        assert parsed.details[0].type_url == "type.googleapis.com/google.rpc.BadRequest"
    assert StatusDetails.from_bytes(details.to_bytes()) == details


def test_status_details_skips_unknown_fields() -> None:
    known = StatusDetails(code=5, message="gone", details=(AnyMessage("t", b"v"),)).to_bytes()
    unknown = b"".join(
        [
            b"\x20\x96\x01",  # field 4, varint 150
            b"\x29" + b"\x01" * 8,  # field 5, fixed64
            b"\x35" + b"\x02" * 4,  # field 6, fixed32
            b"\x3a\x03abc",  # field 7, length-delimited
            b"\x43\x08\x01\x44",  # field 8, a group holding field 1 = 1
        ]
    )
    # An Any with an unknown field inside it, too.
    any_with_extra = b"\x0a\x01t\x12\x01v\x18\x07"
    data = unknown + known + b"\x1a" + bytes([len(any_with_extra)]) + any_with_extra
    parsed = StatusDetails.from_bytes(data)
    assert parsed == StatusDetails(code=5, message="gone", details=(AnyMessage("t", b"v"),) * 2)


def test_status_details_last_scalar_wins_like_protobuf() -> None:
    data = b"\x08\x01\x12\x01a\x08\x02\x12\x01b"
    parsed = StatusDetails.from_bytes(data)
    assert (parsed.code, parsed.message) == (2, "b")
    for status_cls in STATUS_CLASSES:
        reference = status_cls.FromString(data)
        assert (reference.code, reference.message) == (2, "b")


@pytest.mark.parametrize(
    "data",
    [
        b"\x08",  # varint cut short
        b"\x08" + b"\xff" * 10 + b"\x01",  # varint longer than ten bytes
        b"\x12\x05abc",  # length runs past the end
        b"\x12\x02\xff\xfe",  # message is not UTF-8
        b"\x1a\x03\x0a\x05t",  # an Any whose type_url runs past its end
        b"\x00\x01",  # field number 0
        b"\x80\x80\x80\x80\x10\x00",  # field number 2**29, past the largest allowed
        b"\x0e\x00",  # wire type 6 does not exist
        b"\x0f\x00",  # wire type 7 does not exist
        b"\x0c",  # end-group with no group
        b"\x43\x08\x01",  # group never closed
        b"\x43\x4c",  # group closed with another field's end tag
        b"\x29\x00\x00",  # fixed64 cut short
        b"\x35\x00",  # fixed32 cut short
    ],
)
def test_malformed_status_details_raise_value_error(data: bytes) -> None:
    with pytest.raises(ValueError):
        StatusDetails.from_bytes(data)
    for status_cls in STATUS_CLASSES:
        with pytest.raises(DecodeError):
            status_cls.FromString(data)


@given(
    st.lists(
        st.one_of(
            st.binary(max_size=6),
            status_details.map(StatusDetails.to_bytes),
            st.sampled_from([b"\x1a", b"\x12", b"\x0a", b"\x43", b"\x44", b"\x08\xff"]),
        ),
        max_size=5,
    ).map(b"".join)
)
def test_status_details_parser_agrees_with_protobuf(data: bytes) -> None:
    status_cls = STATUS_CLASSES[-1]
    try:
        reference = status_cls.FromString(data)
    except DecodeError:
        with pytest.raises(ValueError):
            StatusDetails.from_bytes(data)
    else:
        # Protobuf keeps unknown fields for re-serialising; StatusDetails drops them.
        reference.DiscardUnknownFields()
        assert StatusDetails.from_bytes(data).to_bytes() == reference.SerializeToString(
            deterministic=True
        )


def test_status_details_code_must_fit_int32() -> None:
    with pytest.raises(ValueError):
        StatusDetails(code=2**31, message="").to_bytes()


def test_status_details_from_a_list_is_hashable() -> None:
    details = StatusDetails(code=1, message="m", details=[AnyMessage("t", b"")])  # type: ignore[arg-type]
    assert details.details == (AnyMessage("t", b""),)
    assert hash(details) == hash(
        StatusDetails(code=1, message="m", details=(AnyMessage("t", b""),))
    )


def test_empty_status_is_empty_bytes() -> None:
    assert StatusDetails(code=0, message="").to_bytes() == b""
    assert StatusDetails.from_bytes(b"") == StatusDetails(code=0, message="")


# --- RpcError ---


def test_rpc_error_reads_like_a_status() -> None:
    error = RpcError(StatusCode.UNAVAILABLE, "connection lost")
    assert str(error) == "UNAVAILABLE: connection lost"
    assert repr(error) == "RpcError(StatusCode.UNAVAILABLE, 'connection lost')"
    assert str(RpcError(StatusCode.CANCELLED)) == "CANCELLED"


def test_rpc_error_carries_details_and_metadata() -> None:
    details = StatusDetails(code=9, message="not yet")
    initial = Metadata([("x-request-id", "42")])
    trailing = Metadata([("retry-after-bin", b"\x01")])
    error = RpcError(
        StatusCode.FAILED_PRECONDITION,
        "not yet",
        details=details,
        initial_metadata=initial,
        trailing_metadata=trailing,
    )
    assert error.code is StatusCode.FAILED_PRECONDITION
    assert error.message == "not yet"
    assert error.details is details
    assert error.initial_metadata is initial
    assert error.trailing_metadata is trailing
    assert "details=StatusDetails(" in repr(error)
    assert "trailing_metadata=Metadata(" in repr(error)


def test_rpc_error_code_given_as_int_becomes_the_enum() -> None:
    error = RpcError(14, "down")  # type: ignore[arg-type]
    assert error.code is StatusCode.UNAVAILABLE


def test_rpc_error_survives_pickling() -> None:
    error = pickle.loads(pickle.dumps(RpcError(StatusCode.NOT_FOUND, "no such container")))
    assert (error.code, error.message) == (StatusCode.NOT_FOUND, "no such container")


def test_protocol_misuse_is_not_an_rpc_error() -> None:
    assert not issubclass(ProtocolMisuse, RpcError)
    with pytest.raises(ProtocolMisuse, match="closed"):
        raise ProtocolMisuse("send on a closed stream")
