"""A sandbox instance's DNS server for hagi:// FastAGI failover, rendered
without starting anything: dnsmasq's configuration (the SRV and A records,
loopback only, nothing forwarded), the instance's resolv.conf, its address,
the private-mount-namespace command line and the dialplan's AGI_APP_URL."""

from __future__ import annotations

import ipaddress
import os
import subprocess
import time
from pathlib import Path

import pytest

from agi_app.sandbox import dns, pbx
from agi_app.sandbox import pbx_config as pc

ZONE = dns.SrvZone(
    "fastagi.t1.test", (dns.SrvTarget(26773, priority=10), dns.SrvTarget(26774, priority=20))
)


def _lines(text: str) -> list[str]:
    return [x for x in text.splitlines() if x and not x.startswith("#")]


def test_the_zone_names_what_asterisk_asks_for():
    assert ZONE.url == "hagi://fastagi.t1.test"
    # res_agi.c prefixes the hagi:// host with SRV_PREFIX "_agi._tcp."
    assert ZONE.service == "_agi._tcp.fastagi.t1.test"
    assert [ZONE.target_name(i) for i in range(2)] == [
        "agi1.fastagi.t1.test",
        "agi2.fastagi.t1.test",
    ]


def test_dnsmasq_serves_one_srv_and_one_a_record_per_target():
    lines = _lines(dns.dnsmasq_conf(ZONE, "127.53.1.2"))
    assert "srv-host=_agi._tcp.fastagi.t1.test,agi1.fastagi.t1.test,26773,10,0" in lines
    assert "srv-host=_agi._tcp.fastagi.t1.test,agi2.fastagi.t1.test,26774,20,0" in lines
    assert "host-record=agi1.fastagi.t1.test,127.0.0.1" in lines
    assert "host-record=agi2.fastagi.t1.test,127.0.0.1" in lines
    assert len([x for x in lines if x.startswith("srv-host=")]) == 2


def test_equal_priorities_and_weights_are_rendered_as_given():
    zone = dns.SrvZone("a.test", (dns.SrvTarget(5000, 10, 60), dns.SrvTarget(5001, 10, 40)))
    lines = _lines(dns.dnsmasq_conf(zone, "127.53.1.2"))
    assert "srv-host=_agi._tcp.a.test,agi1.a.test,5000,10,60" in lines
    assert "srv-host=_agi._tcp.a.test,agi2.a.test,5001,10,40" in lines


def test_dnsmasq_listens_on_its_loopback_address_only_and_forwards_nothing():
    lines = _lines(dns.dnsmasq_conf(ZONE, "127.53.1.2"))
    assert "listen-address=127.53.1.2" in lines and "bind-interfaces" in lines
    assert "port=53" in lines
    # no upstream: not from resolv.conf, none given, every other name local
    assert {"no-resolv", "no-hosts", "no-poll", "local=/#/"} <= set(lines)
    assert not [x for x in lines if x.startswith(("server=", "interface=", "dhcp"))]
    assert "log-queries" not in lines


def test_the_query_log_is_asked_for_by_a_file_name():
    lines = _lines(dns.dnsmasq_conf(ZONE, "127.53.1.2", log_file="/x/queries.log"))
    assert "log-queries" in lines and "log-facility=/x/queries.log" in lines


@pytest.mark.skipif(not os.path.exists(dns.DNSMASQ), reason="dnsmasq-base is not installed")
def test_dnsmasq_accepts_the_configuration(tmp_path: Path):
    conf = tmp_path / "dnsmasq.conf"
    conf.write_text(dns.dnsmasq_conf(ZONE, "127.53.1.2", log_file=str(tmp_path / "q.log")))
    # --test only parses the file: nothing is bound or sent
    r = subprocess.run([dns.DNSMASQ, "--test", f"--conf-file={conf}"], capture_output=True,
                       text=True, timeout=10)  # fmt: skip
    assert r.returncode == 0, r.stdout + r.stderr
    assert "syntax check OK" in r.stdout + r.stderr


def test_a_listen_address_off_loopback_is_refused():
    with pytest.raises(ValueError, match="loopback"):
        dns.dnsmasq_conf(ZONE, "10.0.0.53")


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"port": 0}, "port"),
        ({"port": 70000}, "port"),
        ({"port": 4573, "priority": -1}, "priority"),
        ({"port": 4573, "weight": 65536}, "weight"),
        ({"port": 4573, "address": "10.1.2.3"}, "loopback"),
        ({"port": 4573, "address": "agi.example"}, "IPv4"),
    ],
)
def test_bad_targets_are_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        dns.SrvTarget(**kwargs)


@pytest.mark.parametrize(
    "name", ["localhost", "agi.test:4573", "Agi.test", "a..test", "-a.test", "a_b.test", ""]
)
def test_bad_zone_names_are_refused(name):
    # a port would make Asterisk skip the SRV lookup ("Specifying a port
    # number disables SRV lookups"); one label or odd characters are no zone
    with pytest.raises(ValueError, match="DNS name"):
        dns.SrvZone(name, (dns.SrvTarget(4573),))


def test_a_zone_without_targets_is_refused():
    with pytest.raises(ValueError, match="at least one"):
        dns.SrvZone("a.test", ())


def test_zone_for_an_instance_gives_the_priorities_in_order():
    zone = dns.zone_for("test_2200", [26773, 26774])
    assert zone.name == "fastagi.test-2200.test"
    assert [(t.port, t.priority) for t in zone.targets] == [(26773, 10), (26774, 20)]
    equal = dns.zone_for("x", [1, 2, 3], priorities=(10,))
    assert [t.priority for t in equal.targets] == [10, 10, 10]


def test_the_resolv_conf_names_only_the_instance_server():
    text = dns.resolv_conf("127.53.106.102")
    assert _lines(text) == ["nameserver 127.53.106.102", "options timeout:1 attempts:1"]
    with pytest.raises(ValueError):
        dns.resolv_conf("127.53.106.102:5353")  # glibc takes no port


def test_every_instance_gets_its_own_loopback_address():
    profiles = [
        pbx.test_profile({"AGI_APP_SANDBOX_PORT_OFFSET": str(o)}) for o in range(0, 3001, 200)
    ]
    profiles.append(pc.PROFILES["run"])
    addresses = [dns.dns_address(p.ami_port) for p in profiles]
    assert len(set(addresses)) == len(addresses)
    for a in addresses:
        ip = ipaddress.IPv4Address(a)
        assert ip.is_loopback
        assert a not in ("127.0.0.1", "127.0.0.53", "127.0.0.54")  # the host's resolvers
    assert dns.dns_address(27238) == "127.53.106.102"


def test_asterisk_runs_with_the_instance_resolv_conf_bind_mounted_privately():
    argv = ["chroot", "/tree", "/usr/sbin/asterisk", "-C", "/srv/a.conf", "-f"]
    cmd = dns.private_resolv_command(Path("/srv/x/dns/resolv.conf"), Path("/tree"), argv)
    assert cmd[:4] == ["unshare", "--mount", "--propagation", "private"]
    assert cmd[-len(argv) :] == argv
    assert cmd[-len(argv) - 2 : -len(argv)] == ["/srv/x/dns/resolv.conf", "/tree/etc/resolv.conf"]
    # the shell mounts, then execs the command in place (same pid)
    script = cmd[cmd.index("-c") + 1]
    assert 'mount --bind "$1" "$2"' in script and script.endswith('exec "$@"')


def test_the_shell_step_passes_the_command_through_unchanged(tmp_path: Path):
    # The script run with `mount` replaced by `echo`: what it would mount,
    # then the command it execs, arguments intact.
    cmd = dns.private_resolv_command(tmp_path / "r.conf", Path("/tree"), ["printf", "%s|", "a b"])
    script = cmd[cmd.index("-c") + 1].replace("mount --bind", "echo")
    r = subprocess.run(["/bin/sh", "-c", script, *cmd[cmd.index("-c") + 2 :]],
                       capture_output=True, text=True, timeout=10)  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert r.stdout == f"{tmp_path / 'r.conf'} /tree/etc/resolv.conf\na b|"


def _extensions(agi_url: str | None) -> str:
    profile = pbx.test_profile({"AGI_APP_SANDBOX_PORT_OFFSET": "2200"})
    return pc.asterisk_configs(
        profile, name="t1", pbx_dir="/srv/agi_app/t1", module_dir="/m", modules=[],
        ami_username="agi_app", ami_secret="s", agi_url=agi_url,
    )["extensions.conf"]  # fmt: skip


def test_the_dialplan_url_is_hagi_with_a_zone_and_agi_without():
    assert "AGI_APP_URL = hagi://fastagi.t1.test\n" in _extensions(ZONE.url)
    assert "AGI_APP_URL = agi://127.0.0.1:26773\n" in _extensions(None)


@pytest.mark.parametrize("url", ["hagi://a.test\n[evil]", "http://a.test", "hagi://a b"])
def test_a_bad_dialplan_url_is_refused(url):
    with pytest.raises(ValueError, match="AGI_APP_URL"):
        _extensions(url)


def test_a_pbx_with_a_zone_renders_hagi_and_its_status_says_so(tmp_path: Path):
    tree = tmp_path / "root"
    (tree / "usr/lib/asterisk/modules").mkdir(parents=True)
    profile = pbx.test_profile({"AGI_APP_SANDBOX_PORT_OFFSET": "2200"})
    instance = pbx.PBX(tree, profile, name="t1", srv=ZONE, log=lambda _: None)
    assert "AGI_APP_URL = hagi://fastagi.t1.test" in instance.configs()["extensions.conf"]
    assert instance.dns_address == "127.53.106.102"
    assert instance.status()["fastagi_target"] == "hagi://fastagi.t1.test"
    plain = pbx.PBX(tree, profile, name="t1", log=lambda _: None)
    assert "AGI_APP_URL = agi://127.0.0.1:26773" in plain.configs()["extensions.conf"]


@pytest.mark.parametrize(
    ("text", "port", "priority", "weight"),
    [("4573", 4573, 10, 0), ("4574:20", 4574, 20, 0), (" 4575:10:60 ", 4575, 10, 60)],
)
def test_a_target_on_the_command_line(text, port, priority, weight):
    target = dns.parse_target(text)
    assert (target.port, target.priority, target.weight, target.address) == (
        port, priority, weight, "127.0.0.1",
    )  # fmt: skip


@pytest.mark.parametrize("text", ["", "x", "4573:", "4573:1:2:3", "10.0.0.5:4573", "99999"])
def test_a_bad_target_on_the_command_line_is_refused(text):
    with pytest.raises(ValueError):
        dns.parse_target(text)


def test_sandbox_start_refuses_a_bad_hagi_target_before_doing_anything(capsys):
    from agi_app.sandbox import cli

    with pytest.raises(SystemExit) as e:
        cli.main(["start", "--profile", "test", "--hagi", "10.0.0.5:4573"])
    assert e.value.code == 2
    assert "PORT[:PRIORITY[:WEIGHT]]" in capsys.readouterr().err


def test_no_dnsmasq_is_taken_for_the_instance_server_without_its_conf(tmp_path: Path):
    # A pid file naming a live process that is not this folder's dnsmasq
    # (here: this very test process) is not ours to stop.
    (tmp_path / "dnsmasq.pid").write_text(f"{os.getpid()}\n")
    assert dns.running_pid(tmp_path) is None
    dns.stop_leftover(tmp_path)
    assert not (tmp_path / "dnsmasq.pid").exists()


def test_status_names_the_hagi_url_of_an_instance_another_process_started(tmp_path: Path):
    tree = tmp_path / "root"
    (tree / "usr/lib/asterisk/modules").mkdir(parents=True)
    profile = pbx.test_profile({"AGI_APP_SANDBOX_PORT_OFFSET": "2200"})
    started = pbx.PBX(tree, profile, name="t1", srv=ZONE, log=lambda _: None)
    started.etc_dir.mkdir(parents=True)
    (started.etc_dir / "extensions.conf").write_text(started.configs()["extensions.conf"])
    folder = started.host_dir / "dns"
    folder.mkdir()
    # a process whose command line names the folder's dnsmasq.conf
    # (in a session of its own, as the sandbox starts dnsmasq: stopped by group)
    sleeper = subprocess.Popen(
        ["/bin/sh", "-c", "sleep 30", f"--conf-file={folder}/dnsmasq.conf"],
        start_new_session=True,
    )
    try:
        # until the child has exec'd, /proc shows the forking test's own command line
        cmdline = Path(f"/proc/{sleeper.pid}/cmdline")
        deadline = time.monotonic() + 10
        while b"--conf-file=" not in cmdline.read_bytes() and time.monotonic() < deadline:
            time.sleep(0.01)
        (folder / "dnsmasq.pid").write_text(f"{sleeper.pid}\n")
        info = pbx.PBX(tree, profile, name="t1", log=lambda _: None).status()
        assert info["fastagi_target"] == "hagi://fastagi.t1.test"
        assert info["dns"] == "127.53.106.102:53"
        dns.stop_leftover(folder)
        assert sleeper.wait(timeout=5) is not None
        assert "dns" not in pbx.PBX(tree, profile, name="t1", log=lambda _: None).status()
    finally:
        sleeper.kill()
        sleeper.wait()
