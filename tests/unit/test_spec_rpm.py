"""RPM repositories in a spec (a baseurl mapping, a .repo file), the OSG parameter files'
names through the OSG table (and a user's additions), vm.package_manager, SELinux, and what the
conditions file carries for a dnf guest. No VM: tests/vm/test_vm_dnf.py boots them."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import jsonschema
import pytest
from specfiles import assert_names, spec_error, write

from vmharness.engine.attempt import conditions_for
from vmharness.spec import RpmRepo, expand, json_schema, load_spec
from vmharness.wire.codec import decode, encode

REPO = Path(__file__).resolve().parents[2]
OSG_PARAMS = REPO.parent / "shared" / "peer-data" / "vm-test-runs" / "parameters.d"
MAIN = "deb http://deb.debian.org/debian {suite} main"

RPM_SPEC = """\
platforms: [debian-12]
sources:
  - {label: local, repos: [local], upgrade_to: [newer]}
  - {label: file, repos: [fromfile]}
package_sets:
  - {label: hello, packages: [hello], selinux: false}
repositories:
  local: {baseurl: "http://10.0.2.2:8080/el$releasever/$basearch/", gpgcheck: false}
  newer:
    baseurl: https://repo.example.org/newer/el$releasever/$basearch/
    gpgkey: https://repo.example.org/RPM-GPG-KEY-example
    priority: 50
  fromfile: extra.repo
test:
  command: ./run
vm:
  package_manager: dnf
"""

REPO_FILE = """\
# a team's own
[team]
name = Team packages
baseurl = https://rpm.team.example/el$releasever/$basearch/
  https://mirror.team.example/el$releasever/$basearch/
gpgcheck = 1
gpgkey = https://rpm.team.example/key

[team-debug]
mirrorlist = https://rpm.team.example/mirrors?debug=1
enabled = 0
"""


def section(repo: RpmRepo, index: int = 0) -> dict[str, str]:
    return dict(repo.sections[index])


def test_rpm_repositories_from_a_mapping_and_a_repo_file(tmp_path: Path) -> None:
    write(tmp_path, "extra.repo", REPO_FILE)
    spec = load_spec(write(tmp_path, "spec.yaml", RPM_SPEC))
    local = spec.repositories["local"]
    assert isinstance(local, RpmRepo)
    assert section(local) == {
        "id": "local",
        "name": "local",
        "baseurl": "http://10.0.2.2:8080/el$releasever/$basearch/",  # dnf's variables kept
        "enabled": "1",
        "gpgcheck": "0",
    }
    newer = spec.repositories["newer"]
    assert isinstance(newer, RpmRepo)
    assert section(newer)["gpgcheck"] == "1"  # on unless the spec says otherwise
    assert section(newer)["gpgkey"] == "https://repo.example.org/RPM-GPG-KEY-example"
    assert section(newer)["priority"] == "50"
    fromfile = spec.repositories["fromfile"]
    assert isinstance(fromfile, RpmRepo)
    assert [dict(s)["id"] for s in fromfile.sections] == ["team", "team-debug"]
    assert section(fromfile)["baseurl"] == (
        "https://rpm.team.example/el$releasever/$basearch/ "
        "https://mirror.team.example/el$releasever/$basearch/"
    )
    assert section(fromfile, 1) == {
        "id": "team-debug",
        "mirrorlist": "https://rpm.team.example/mirrors?debug=1",
        "enabled": "0",
    }
    assert spec.vm.package_manager == "dnf"


def test_the_conditions_carry_rpm_repositories_the_package_manager_and_selinux(
    tmp_path: Path,
) -> None:
    write(tmp_path, "extra.repo", REPO_FILE)
    runs = expand(load_spec(write(tmp_path, "spec.yaml", RPM_SPEC)))
    local = next(r for r in runs if r.source.label == "local")
    text = conditions_for(local, main_source=MAIN, suite="bookworm").to_toml()
    cond = tomllib.loads(text)
    assert cond["package_manager"] == "dnf"
    assert cond["selinux"] == "permissive"  # the package set's selinux: false
    assert cond["repositories"] == {"install": [], "upgrade": []}
    assert [s["id"] for s in cond["rpm"]["install"]] == ["local"]
    assert [s["id"] for s in cond["rpm"]["upgrade"]] == ["newer"]
    # A Run crosses process boundaries as JSON (plan, run database): RPM repositories too.
    assert decode(type(local), json.loads(json.dumps(encode(local)))) == local


@pytest.mark.parametrize(
    ("value", "line", "field", "words"),
    [
        ("{baseurl: not-a-url}", 6, "repositories.local.baseurl", "expected one URL"),
        ("{gpgcheck: false}", 6, "repositories.local.baseurl", "missing required key"),
        (
            "{baseurl: 'http://x/', gpgcheck: maybe}",
            6,
            "repositories.local.gpgcheck",
            "true or false",
        ),
        ("{baseurl: 'http://x/', gpgkey: 'a key'}", 6, "repositories.local.gpgkey", "URL"),
        ("{baseurl: 'http://x/', priority: 100}", 6, "repositories.local.priority", "1 to 99"),
        ("{baseurl: 'http://x/', enabled: 1}", 6, "repositories.local.enabled", "unknown"),
        ("missing.repo", 6, "repositories.local", "no such .repo file"),
        ("'rpm http://x/'", 6, "repositories.local", "apt source line, an RPM repository"),
    ],
)
def test_a_bad_rpm_repository_names_file_line_and_field(
    tmp_path: Path, value: str, line: int, field: str, words: str
) -> None:
    path = write(
        tmp_path,
        "spec.yaml",
        "platforms: [debian-12]\nsources: [{label: s, repos: [local]}]\n"
        "package_sets: [{label: p, packages: [a]}]\ntest: {command: ./run}\n"
        f"repositories:\n  local: {value}\n",
    )
    err = spec_error(path)
    assert (err.file, err.line, err.field) == (str(path), line, field), str(err)
    assert words in str(err), str(err)


@pytest.mark.parametrize(
    ("text", "line", "words"),
    [
        ("[a]\nbaseurl = http://x/\n[a]\nbaseurl = http://y/\n", 3, "already exists"),
        ("baseurl = http://x/\n", 1, "not a .repo file"),
        ("[a]\nname = no url\n", 1, "no baseurl, mirrorlist or metalink"),
        ("[a b]\nbaseurl = http://x/\n", 1, "bad repository id"),
        ("# nothing\n", 1, "defines no repository"),
    ],
)
def test_a_bad_repo_file_names_its_own_line(
    tmp_path: Path, text: str, line: int, words: str
) -> None:
    repo = write(tmp_path, "bad.repo", text)
    path = write(
        tmp_path,
        "spec.yaml",
        "platforms: [debian-12]\nsources: [{label: s, repos: [local]}]\n"
        "package_sets: [{label: p, packages: [a]}]\ntest: {command: ./run}\n"
        "repositories:\n  local: bad.repo\n",
    )
    with pytest.raises(Exception) as info:
        load_spec(path)
    err = info.value
    assert getattr(err, "file", None) == str(repo), str(err)
    assert getattr(err, "line", None) == line, str(err)
    assert getattr(err, "field", None) == "repositories.local"
    assert words in str(err), str(err)


def test_a_source_may_not_mix_apt_and_rpm_repositories(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "spec.yaml",
        "platforms: [debian-12]\nsources: [{label: s, repos: [deb, rpm]}]\n"
        "package_sets: [{label: p, packages: [a]}]\ntest: {command: ./run}\n"
        'repositories:\n  deb: "deb http://x/ ./"\n  rpm: {baseurl: "http://x/"}\n',
    )
    err = spec_error(path)
    assert_names(err, path, 2, "sources[0].repos")
    assert "mixes apt and RPM" in str(err)


def test_a_bad_package_manager_is_refused(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "spec.yaml",
        "platforms: [debian-12]\nsources: [{label: s}]\n"
        "package_sets: [{label: p, packages: [a]}]\ntest: {command: ./run}\n"
        "vm: {package_manager: zypper}\n",
    )
    err = spec_error(path)
    assert (err.file, err.line, err.field) == (str(path), 5, "vm.package_manager"), str(err)
    assert "auto, apt, dnf, yum" in str(err)


OSG_SPEC = """\
platforms: [rocky_9.x86_64]
sources:
  - opensciencegrid:master; 24; osg, epel-testing
  - opensciencegrid:master; 23; osg-upcoming > 24/osg, osg-testing
  - 24; osg, local-only
package_sets:
  - label: CE
    packages: [osg-ce-condor]
  - label: Permissive
    packages: [x]
    selinux: false
"""


def osg_conditions(spec_path: Path, label: str) -> dict:
    runs = expand(load_spec(spec_path))
    run = next(r for r in runs if r.source.label.startswith(label))
    return tomllib.loads(conditions_for(run, main_source=MAIN, suite="x").to_toml())


def test_the_osg_names_map_to_the_osgs_rpm_repositories(tmp_path: Path) -> None:
    path = write(tmp_path, "osg.yaml", OSG_SPEC)
    cond = osg_conditions(path, "24; osg, epel-testing")
    osg, epel = cond["rpm"]["install"]
    assert osg["id"] == "osg"
    assert osg["baseurl"] == (
        "https://repo.osg-htc.org/osg/24-main/el$releasever/release/$basearch/"
    )
    assert osg["gpgkey"] == "https://repo.osg-htc.org/osg/RPM-GPG-KEY-OSG-24-developer"
    assert osg["gpgcheck"] == "1" and osg["priority"] == "98"
    assert epel["id"] == "epel-testing" and "/epel/testing/$releasever/" in epel["baseurl"]
    assert cond["rpm"]["upgrade"] == []
    # Installed from one series, upgraded to another's repositories.
    cond = osg_conditions(path, "23; osg-upcoming")
    (upcoming,) = cond["rpm"]["install"]
    assert upcoming["baseurl"].startswith("https://repo.osg-htc.org/osg/23-upcoming/el")
    assert [s["baseurl"].split("/")[4:7] for s in cond["rpm"]["upgrade"]] == [
        ["24-main", "el$releasever", "release"],
        ["24-main", "el$releasever", "testing"],
    ]
    # A name the table does not know is the image's own: nothing is written for it.
    cond = osg_conditions(path, "24; osg, local-only")
    assert [s["id"] for s in cond["rpm"]["install"]] == ["osg"]
    assert cond["selinux"] == "enforcing"


def test_a_users_table_adds_and_replaces_osg_entries(tmp_path: Path) -> None:
    write(
        tmp_path,
        "mirror.toml",
        """\
        # our site's mirror, and the repository of our own builds
        [osg]
        baseurl = "http://mirror.site.example/osg/{series}-main/el$releasever/release/$basearch/"
        gpgcheck = false

        ["24/local-only"]
        baseurl = "http://builds.site.example/24/$basearch/"
        """,
    )
    path = write(tmp_path, "osg.yaml", OSG_SPEC + "osg_repositories: mirror.toml\n")
    cond = osg_conditions(path, "24; osg, local-only")
    osg, local = cond["rpm"]["install"]
    assert osg["baseurl"].startswith("http://mirror.site.example/osg/24-main/")
    assert osg["gpgcheck"] == "0" and "gpgkey" not in osg
    assert local == {
        "id": "local-only",
        "name": "local-only",
        "baseurl": "http://builds.site.example/24/$basearch/",
        "enabled": "1",
        "gpgcheck": "1",
    }
    # The entries the user's file does not name are the built-in ones.
    cond = osg_conditions(path, "24; osg, epel-testing")
    assert "fedoraproject.org" in cond["rpm"]["install"][1]["baseurl"]


@pytest.mark.parametrize(
    ("table", "line", "field", "words"),
    [
        ('[osg]\nbaseurl = "x"\n', 1, "osg_repositories.osg.baseurl", "expected one URL"),
        ("[osg\n", 1, "osg_repositories", "not TOML"),
        ('["a/b/c"]\nbaseurl = "http://x/"\n', 1, "osg_repositories.a/b/c", "bad entry"),
        ('[osg]\nbaseurl = "http://x/"\nmirror = 1\n', 1, "osg_repositories.osg.mirror", "unknown"),
    ],
)
def test_a_bad_osg_table_names_its_file_line_and_field(
    tmp_path: Path, table: str, line: int, field: str, words: str
) -> None:
    table_file = tmp_path / "table.toml"
    table_file.write_text(table)
    path = write(tmp_path, "osg.yaml", OSG_SPEC + "osg_repositories: table.toml\n")
    with pytest.raises(Exception) as info:
        load_spec(path)
    err = info.value
    assert getattr(err, "file", None) == str(table_file), str(err)
    assert getattr(err, "line", None) == line, str(err)
    assert getattr(err, "field", None) == field, str(err)
    assert words in str(err)


def test_a_missing_osg_table_file_names_the_spec(tmp_path: Path) -> None:
    path = write(tmp_path, "osg.yaml", OSG_SPEC + "osg_repositories: nowhere.toml\n")
    err = spec_error(path)
    assert_names(err, path, 12, "osg_repositories")


@pytest.mark.skipif(not OSG_PARAMS.is_dir(), reason="peer data absent")
def test_every_repository_name_of_the_osgs_parameter_files_is_in_the_table(
    tmp_path: Path,
) -> None:
    spec = load_spec(OSG_PARAMS)
    names = {n for s in spec.sources for n in (*s.repos, *s.upgrade_to)}
    assert names and names <= set(spec.osg_repositories), names - set(spec.osg_repositories)
    for run in expand(spec):
        cond = tomllib.loads(conditions_for(run, main_source=MAIN, suite="x").to_toml())
        given = [s["id"] for s in cond["rpm"]["install"] + cond["rpm"]["upgrade"]]
        assert len(given) == len(set(given)), given  # one id for one repository in a run


def test_the_schema_takes_the_three_forms_of_a_repository(tmp_path: Path) -> None:
    schema = json_schema()
    validator = jsonschema.Draft202012Validator(schema)
    good = {
        "repositories": {
            "deb": "deb http://x/ ./",
            "file": "team.repo",
            "rpm": {"baseurl": "https://x/el$releasever/$basearch/", "gpgcheck": False},
        },
        "osg_repositories": "mirror.toml",
        "vm": {"package_manager": "dnf"},
    }
    assert list(validator.iter_errors(good)) == []
    for bad in (
        {"repositories": {"rpm": {"gpgcheck": False}}},
        {"repositories": {"rpm": {"baseurl": "https://x/", "priority": 0}}},
        {"repositories": {"rpm": "http://x/"}},
        {"vm": {"package_manager": "zypper"}},
    ):
        assert list(validator.iter_errors(bad)), bad
