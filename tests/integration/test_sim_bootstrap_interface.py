"""The simulated device in bootstrap mode, request by request: real aiocoap messages into the device's bootstrap
handler (the seam its bootstrap context serves), no sockets. The bootstrap server's own codec and Discover parser
(bootstrap.sequence) are the oracles for what goes over the wire.
"""

from __future__ import annotations

import pytest
from aiocoap import Message
from aiocoap.numbers.codes import Code

from bootstrap.sequence import DeviceConfig, bootstrap_pack, parse_discover
from client_sim.accounts import bootstrap_account, configuration_problem, server_account
from client_sim.credentials import FactoryCredentials
from client_sim.device import SimulatedDevice
from lwm2m_server.core.codec import registry
from lwm2m_server.core.codec.formats import ContentFormat
from lwm2m_server.core.model.definitions import ObjectModel
from lwm2m_server.core.nodes import Instance, Obj, ResourceType, SingleResource
from lwm2m_server.core.paths import LwM2mPath

MODEL = ObjectModel.default()
BS_KEY = bytes(range(16))
SERVER_KEY = bytes(range(100, 116))
FACTORY = FactoryCredentials("ep-1", "bs-ep-1", BS_KEY, "coaps://bs.example:5784")
T = ResourceType


def device(**options: object) -> SimulatedDevice:
    return SimulatedDevice.from_factory(FACTORY, drift_interval=0, **options)  # type: ignore[arg-type]


def ask(dev: SimulatedDevice, code: Code, path: str, payload: bytes = b"", *, fmt: ContentFormat | None = None,
        accept: int | None = None, observe: int | None = None) -> Message:
    msg = Message(code=code, uri_path=tuple(p for p in path.split("/") if p), payload=payload)
    if fmt is not None:
        msg.opt.content_format = int(fmt)
    if accept is not None:
        msg.opt.accept = accept
    if observe is not None:
        msg.opt.observe = observe
    return dev.bootstrap_interface.handle(msg)


def account(iid: int, uri: str = "coaps://lwm2m.example:5684", ssid: int = 1, key: bytes = SERVER_KEY) -> Instance:
    return Instance.of(iid, (
        SingleResource(0, T.STRING, uri), SingleResource(1, T.BOOLEAN, False), SingleResource(2, T.INTEGER, 0),
        SingleResource(3, T.OPAQUE, b"sv-ep-1"), SingleResource(4, T.OPAQUE, b""), SingleResource(5, T.OPAQUE, key),
        SingleResource(10, T.INTEGER, ssid)))


def server(iid: int, ssid: int = 1) -> Instance:
    return Instance.of(iid, (SingleResource(0, T.INTEGER, ssid), SingleResource(1, T.INTEGER, 120),
                             SingleResource(6, T.BOOLEAN, True), SingleResource(7, T.STRING, "U")))


def put(dev: SimulatedDevice, path: str, node: object, fmt: ContentFormat = ContentFormat.TLV) -> Message:
    payload = registry.encode(node, LwM2mPath.parse(path), fmt, MODEL)  # type: ignore[arg-type]
    return ask(dev, Code.PUT, path, payload, fmt=fmt)


def test_a_factory_device_has_only_its_bootstrap_account() -> None:
    dev = device()
    bs = bootstrap_account(dev.objects)
    assert bs is not None and bs.bootstrap and bs.security_iid == 0 and bs.usable
    assert (bs.uri, bs.identity, bs.key) == (FACTORY.bootstrap_uri, b"bs-ep-1", BS_KEY)
    assert server_account(dev.objects) is None and dev.objects.instance_ids(1) == ()
    assert "psk_key" not in repr(FACTORY) and BS_KEY.hex() not in repr(FACTORY) and repr(BS_KEY) not in repr(bs)
    with pytest.raises(ValueError, match="factory credentials are for"):
        SimulatedDevice("other", factory=FACTORY)
    with pytest.raises(ValueError, match="server URI or factory"):
        SimulatedDevice("ep-1")


def test_bootstrap_discover_lists_version_accounts_and_instances() -> None:
    dev = device()
    answer = ask(dev, Code.GET, "/", accept=int(ContentFormat.LINK))
    assert answer.code == Code.CONTENT and answer.opt.content_format == int(ContentFormat.LINK)
    assert answer.payload == (b'</>;lwm2m=1.1,</0/0>;uri="coaps://bs.example:5784",</1>,</3>;ver=1.2,</3/0>,'
                              b'</4>;ver=1.3,</4/0>')
    assert put(dev, "/0/1", account(1)).code == Code.CHANGED
    assert put(dev, "/1/0", server(0)).code == Code.CHANGED
    answer = ask(dev, Code.GET, "/", accept=int(ContentFormat.LINK))
    assert parse_discover(answer.payload) == ("1.1", [0], {1: 1})  # the bootstrap server's own reading
    assert b'</0/1>;ssid=1;uri="coaps://lwm2m.example:5684"' in answer.payload and b"</1/0>;ssid=1" in answer.payload
    only_security = ask(dev, Code.GET, "/0", accept=int(ContentFormat.LINK)).payload
    assert only_security == b'</0/0>;uri="coaps://bs.example:5784",</0/1>;ssid=1;uri="coaps://lwm2m.example:5684"'
    assert ask(dev, Code.GET, "/3/0", accept=int(ContentFormat.LINK)).code == Code.BAD_REQUEST
    assert ask(dev, Code.GET, "/9", accept=int(ContentFormat.LINK)).code == Code.NOT_FOUND
    assert ask(device(lwm2m_version="1.2"), Code.GET, "/", accept=40).payload.startswith(b"</>;lwm2m=1.2,")


def test_finish_refuses_an_unusable_configuration_with_4_06() -> None:
    dev = device()
    finished: list[bool] = []
    dev.bootstrap_interface.on_finish = lambda: finished.append(True)
    assert ask(dev, Code.POST, "/bs").code == Code.NOT_ACCEPTABLE  # nothing but the bootstrap account
    assert put(dev, "/0/1", account(1)).code == Code.CHANGED
    refused = ask(dev, Code.POST, "/bs")
    assert refused.code == Code.NOT_ACCEPTABLE and b"no /1 instance has Short Server ID 1" in refused.payload
    assert put(dev, "/1/0", server(0, ssid=2)).code == Code.CHANGED  # a /1 for another server
    assert ask(dev, Code.POST, "/bs").code == Code.NOT_ACCEPTABLE
    assert put(dev, "/0/1", account(1, uri="coap://lwm2m.example")).code == Code.CHANGED  # PSK with coap://
    assert put(dev, "/1/0", server(0, ssid=1)).code == Code.CHANGED
    refused = ask(dev, Code.POST, "/bs")
    assert refused.code == Code.NOT_ACCEPTABLE and b"PSK (mode 0) needs a coaps:// URI" in refused.payload
    assert finished == [] and not dev.bootstrap_interface.finished
    assert put(dev, "/0/1", account(1)).code == Code.CHANGED
    assert ask(dev, Code.POST, "/bs").code == Code.CHANGED
    assert finished == [True] and dev.bootstrap_interface.finished
    assert configuration_problem(dev.objects) == ""
    chosen = server_account(dev.objects)
    assert chosen is not None and chosen.server_iid == 0 and chosen.key == SERVER_KEY
    assert dev.server_uri == "coaps://lwm2m.example:5684" and dev.lifetime == 120
    assert ask(dev, Code.GET, "/bs").code == Code.METHOD_NOT_ALLOWED


def test_bootstrap_read_gives_the_server_object_and_never_a_key() -> None:
    dev = device()
    put(dev, "/0/1", account(1))
    put(dev, "/1/0", server(0))
    for path in ("/0", "/0/0", "/0/1/5", "/3/0", "/3/0/0"):
        answer = ask(dev, Code.GET, path)
        assert answer.code == Code.UNAUTHORIZED, path
        assert SERVER_KEY not in answer.payload and BS_KEY not in answer.payload
    answer = ask(dev, Code.GET, "/1", accept=int(ContentFormat.TLV))
    assert answer.code == Code.CONTENT and answer.opt.content_format == int(ContentFormat.TLV)
    node = registry.decode(answer.payload, ContentFormat.TLV, LwM2mPath.of(1), MODEL)
    assert isinstance(node, Obj) and node.instances[0].resources[0].value == 1  # type: ignore[union-attr]
    default = ask(dev, Code.GET, "/1/0")
    assert default.opt.content_format == int(ContentFormat.SENML_CBOR)
    assert ask(dev, Code.GET, "/1/0/1").payload == b"120"
    assert ask(dev, Code.GET, "/1/0", accept=int(ContentFormat.TEXT)).code == Code.NOT_ACCEPTABLE
    assert ask(dev, Code.GET, "/1/7").code == Code.NOT_FOUND


@pytest.mark.parametrize("fmt", [ContentFormat.TLV, ContentFormat.SENML_JSON, ContentFormat.SENML_CBOR,
                                 ContentFormat.LWM2M_CBOR])
def test_bootstrap_write_creates_instances_in_every_format(fmt: ContentFormat) -> None:
    dev = device()
    assert put(dev, "/0/1", account(1), fmt).code == Code.CHANGED
    assert put(dev, "/1/3", server(3), fmt).code == Code.CHANGED
    assert dev.objects.instance_ids(0) == (0, 1) and dev.objects.instance_ids(1) == (3,)
    chosen = server_account(dev.objects)
    assert chosen is not None and (chosen.identity, chosen.key, chosen.server_iid) == (b"sv-ep-1", SERVER_KEY, 3)
    # resource level: the Short Server ID (read-only for a management server) and the key
    assert put(dev, "/0/1/10", SingleResource(10, T.INTEGER, 9), fmt).code == Code.CHANGED
    assert put(dev, "/1/3/0", SingleResource(0, T.INTEGER, 9), fmt).code == Code.CHANGED
    chosen = server_account(dev.objects)
    assert chosen is not None and chosen.short_server_id == 9 and chosen.server_iid == 3
    # the bootstrap account may be rewritten too
    new_bs = Instance.of(0, (SingleResource(0, T.STRING, "coaps://bs2.example"), SingleResource(1, T.BOOLEAN, True),
                             SingleResource(2, T.INTEGER, 0), SingleResource(3, T.OPAQUE, b"bs-ep-1"),
                             SingleResource(4, T.OPAQUE, b""), SingleResource(5, T.OPAQUE, BS_KEY)))
    assert put(dev, "/0/0", new_bs, fmt).code == Code.CHANGED
    assert bootstrap_account(dev.objects).uri == "coaps://bs2.example"  # type: ignore[union-attr]


def test_bootstrap_write_of_whole_objects_and_bad_payloads() -> None:
    dev = device()
    both = Obj(0, {1: account(1), 2: account(2, uri="coaps://backup.example", ssid=2)})
    assert put(dev, "/0", both, ContentFormat.SENML_CBOR).code == Code.CHANGED
    assert put(dev, "/1", Obj(1, {0: server(0), 1: server(1, ssid=2)}), ContentFormat.TLV).code == Code.CHANGED
    assert dev.objects.instance_ids(0) == (0, 1, 2) and dev.objects.instance_ids(1) == (0, 1)
    assert ask(dev, Code.PUT, "/0/1", b"\x01\x02", fmt=ContentFormat.TLV).code == Code.BAD_REQUEST
    assert ask(dev, Code.PUT, "/0/1", b"x", fmt=None).code == Code.BAD_REQUEST  # no Content-Format
    unknown = Message(code=Code.PUT, uri_path=("0", "1"), payload=b"x")
    unknown.opt.content_format = 9999
    assert dev.bootstrap_interface.handle(unknown).code == Code.UNSUPPORTED_CONTENT_FORMAT
    assert put(dev, "/0/1/77", SingleResource(77, T.INTEGER, 1), ContentFormat.SENML_JSON).code == Code.NOT_FOUND


def test_bootstrap_delete_keeps_the_bootstrap_account() -> None:
    dev = device()
    put(dev, "/0", Obj(0, {1: account(1), 2: account(2, ssid=2)}))
    put(dev, "/1", Obj(1, {0: server(0), 1: server(1, ssid=2)}))
    assert ask(dev, Code.DELETE, "/0/0").code == Code.BAD_REQUEST  # the bootstrap account
    assert ask(dev, Code.DELETE, "/0/0/1").code == Code.BAD_REQUEST
    assert ask(dev, Code.DELETE, "/3/0").code == Code.BAD_REQUEST and ask(dev, Code.DELETE, "/3").code == 0x80
    assert ask(dev, Code.DELETE, "/0/2").code == Code.DELETED
    assert ask(dev, Code.DELETE, "/0/2").code == Code.DELETED  # nothing there: still deleted
    assert ask(dev, Code.DELETE, "/1/1").code == Code.DELETED
    assert dev.objects.instance_ids(0) == (0, 1) and dev.objects.instance_ids(1) == (0,)
    assert ask(dev, Code.DELETE, "/").code == Code.DELETED
    assert dev.objects.instance_ids(0) == (0,) and dev.objects.instance_ids(1) == ()
    assert dev.objects.instance_ids(3) == (0,) and dev.objects.instance_ids(4) == (0,)  # left alone
    put(dev, "/0/1", account(1))
    put(dev, "/1/0", server(0))
    assert ask(dev, Code.DELETE, "/0").code == Code.DELETED and dev.objects.instance_ids(0) == (0,)
    assert ask(dev, Code.DELETE, "/1").code == Code.DELETED and dev.objects.instance_ids(1) == ()


def test_operations_that_are_not_bootstrap_operations_are_refused() -> None:
    dev = device()
    put(dev, "/0/1", account(1))
    put(dev, "/1/0", server(0))
    assert ask(dev, Code.POST, "/1/0/8").code == Code.METHOD_NOT_ALLOWED  # Execute
    assert ask(dev, Code.POST, "/1", registry.encode(server(5), LwM2mPath.of(1, 5), ContentFormat.TLV, MODEL),
               fmt=ContentFormat.TLV).code == Code.METHOD_NOT_ALLOWED  # Create
    assert ask(dev, Code.GET, "/1/0", observe=0).code == Code.METHOD_NOT_ALLOWED  # Observe
    assert ask(dev, Code.PUT, "/1/0/1").code == Code.METHOD_NOT_ALLOWED  # Write-Attributes (?pmin=...)
    assert ask(dev, Code.iPATCH, "/", b"\x80", fmt=ContentFormat.SENML_CBOR).code == Code.METHOD_NOT_ALLOWED
    assert ask(dev, Code.FETCH, "/", b"\x80", fmt=ContentFormat.SENML_CBOR).code == Code.METHOD_NOT_ALLOWED
    assert ask(dev, Code.GET, "/x/y").code == Code.NOT_FOUND


def test_a_bootstrap_pack_replaces_the_configuration() -> None:
    dev = device(lwm2m_version="1.2")
    put(dev, "/0/4", account(4, uri="coaps://old.example", ssid=7))
    put(dev, "/1/2", server(2, ssid=7))
    config = DeviceConfig(bootstrap_uri=FACTORY.bootstrap_uri, bootstrap_identity=FACTORY.psk_identity,
                          bootstrap_psk=BS_KEY, server_uri="coaps://new.example:5684", server_identity="sv-new",
                          server_psk=SERVER_KEY, short_server_id=3, lifetime=90)
    pack = bootstrap_pack(config, ContentFormat.SENML_CBOR, MODEL)  # what the bootstrap server sends
    dev.bootstrap_interface.apply_pack(pack, int(ContentFormat.SENML_CBOR))
    assert dev.objects.instance_ids(0) == (0, 1) and dev.objects.instance_ids(1) == (0,)
    chosen = server_account(dev.objects)
    assert chosen is not None and (chosen.uri, chosen.identity, chosen.key) == (
        "coaps://new.example:5684", b"sv-new", SERVER_KEY)
    assert chosen.short_server_id == 3 and dev.lifetime == 90
    bs = bootstrap_account(dev.objects)
    assert bs is not None and bs.key == BS_KEY
    with pytest.raises(Exception, match="bootstrap pack"):
        dev.bootstrap_interface.apply_pack(registry.encode_composite(
            {LwM2mPath.of(3, 0, 0): SingleResource(0, T.STRING, "x")}, ContentFormat.SENML_CBOR, MODEL),
            int(ContentFormat.SENML_CBOR))
