#!/usr/bin/python
"""oneos.fleet.wheelhouse: the wheels one device platform needs to install OneOS with no package index."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: wheelhouse
short_description: Build a wheelhouse from which a device installs OneOS offline
description:
  - Builds the C(oneos) wheel from a OneOS source tree (or takes a built one), walks its dependency
    closure for the TARGET platform and puts one wheel per requirement in O(dest), so that a device runs
    C(pip install --no-index --find-links DEST oneos==VERSION) with no package index.
  - Environment markers are evaluated against the target (C(platform_machine), C(python_version), Linux,
    CPython), not against the control machine, which is where C(pip download --platform) goes wrong.
  - Every requirement of the closure must be pinned (C(name==version)) in O(constraints).
  - "Runs on the control machine (C(delegate_to: localhost)). A second run with nothing new downloads
    nothing and reports no change; wheels in O(dest) that the closure no longer needs are removed."
version_added: "0.1.0"
author: OneOS
options:
  source:
    description:
      - A OneOS source tree (a folder holding C(pyproject.toml)) or a built C(oneos) wheel.
    type: path
    required: true
  constraints:
    description:
      - The pins file (C(name==version) a line, as in the repository's C(constraints.txt)).
    type: path
    required: true
  dest:
    description:
      - The folder for this platform's wheels. Created when missing; other C(.whl) files in it are removed.
    type: path
    required: true
  machine:
    description:
      - The target's C(platform_machine).
      - C(armv7l) is accepted, but fails naming the first package with no wheel for it.
    type: str
    required: true
    choices: [x86_64, aarch64, armv7l]
  python_version:
    description:
      - The target's Python, C(3.11) (or C(3.11.2), which markers on C(python_full_version) then see;
        C(3.11) counts as C(3.11.0)).
    type: str
    default: "3.11"
  glibc:
    description:
      - The target's glibc version; wheels tagged C(manylinux_2_17) up to C(manylinux_2_MINOR),
        C(manylinux2014) and C(linux_MACHINE) are accepted.
    type: str
    default: "2.36"
  build_isolation:
    description:
      - Build the C(oneos) wheel in an isolated environment (pip fetches setuptools).
        C(false) builds it offline with this Python's setuptools.
    type: bool
    default: true
notes:
  - Check mode computes the closure (in a temporary folder, downloading what it must) and leaves O(dest) alone.
  - Needs C(pip) and C(packaging) in the Python that runs the module.
attributes:
  check_mode:
    support: full
"""

EXAMPLES = r"""
- name: Wheels for the aarch64 nodes
  oneos.fleet.wheelhouse:
    source: "{{ playbook_dir }}/../.."
    constraints: "{{ playbook_dir }}/../../constraints.txt"
    dest: /var/cache/oneos/wheels/aarch64
    machine: aarch64
  delegate_to: localhost
  run_once: true
  register: wheels

- name: Install OneOS on the device from the copied wheelhouse
  ansible.builtin.pip:
    name: "{{ wheels.requirement }}"
    virtualenv: /opt/oneos
    extra_args: --no-index --find-links /var/cache/oneos/wheels
"""

RETURN = r"""
version:
  description: The version of the oneos wheel.
  returned: success
  type: str
  sample: 0.1.0
requirement:
  description: What a device installs from the wheelhouse.
  returned: success
  type: str
  sample: oneos==0.1.0
wheels:
  description: The file names of every wheel in O(dest) (the oneos wheel and its closure), sorted.
  returned: success
  type: list
  elements: str
  sample: [oneos-0.1.0-py3-none-any.whl, PyYAML-6.0.3-cp311-cp311-manylinux_2_17_aarch64.whl]
added:
  description: The wheels this run put in O(dest) (new, or the oneos wheel whose contents changed).
  returned: success
  type: list
  elements: str
removed:
  description: The wheels this run removed from O(dest) (not in the closure any more).
  returned: success
  type: list
  elements: str
"""

import os
import re
import shutil
import sys
import tarfile
import tempfile
import zipfile

from ansible.module_utils.basic import AnsibleModule, missing_required_lib

try:
    from packaging.markers import Marker
    from packaging.requirements import Requirement
    from packaging.tags import Tag, compatible_tags, cpython_tags
    from packaging.utils import InvalidWheelFilename, canonicalize_name, parse_wheel_filename
    from packaging.version import Version
except ImportError:
    HAS_PACKAGING = False
else:
    HAS_PACKAGING = True

OLDEST_MANYLINUX = 17   # manylinux2014 is manylinux_2_17


# Files in a source distribution that mean it builds compiled code.
COMPILED_SOURCES = (".c", ".cc", ".cpp", ".cxx", ".pyx", ".rs", "/Cargo.toml", "/CMakeLists.txt", ".f90")


class Refused(Exception):
    """A one-line reason the wheelhouse cannot be built, for the module's msg."""


def target_environment(machine, python_version):
    """The marker environment of the device, whatever machine runs this module."""
    parts = python_version.split(".")
    full = python_version if len(parts) == 3 else python_version + ".0"
    return {
        "implementation_name": "cpython",
        "implementation_version": full,
        "os_name": "posix",
        "platform_machine": machine,
        "platform_python_implementation": "CPython",
        "platform_release": "",
        "platform_system": "Linux",
        "platform_version": "",
        "python_full_version": full,
        "python_version": ".".join(parts[:2]),
        "sys_platform": "linux",
        "extra": "",
    }


def platforms(machine, glibc_minor):
    """The platform tags a wheel for the device may carry, best first."""
    tags = ["manylinux_2_%d_%s" % (minor, machine) for minor in range(glibc_minor, OLDEST_MANYLINUX - 1, -1)]
    return tags + ["manylinux2014_%s" % machine, "linux_%s" % machine]


def target_tags(machine, python_version, glibc_minor):
    """Every wheel tag the device's pip accepts."""
    version = tuple(int(n) for n in python_version.split(".")[:2])
    plats = platforms(machine, glibc_minor)
    return set(cpython_tags(version, platforms=plats)) | set(compatible_tags(version, "cp%d%d" % version, plats))


def read_constraints(path, environment):
    """{canonical name: version} from a pins file; a pin whose marker does not hold on the device is left out."""
    pins = {}
    with open(path, encoding="utf-8") as lines:
        for number, line in enumerate(lines, 1):
            line = line.split("#", 1)[0].strip()
            if not line:
                continue
            try:
                pin = Requirement(line)
            except ValueError as e:
                raise Refused("%s line %d is not a requirement (%s): write name==version" % (path, number, e))
            specs = list(pin.specifier)
            if len(specs) != 1 or specs[0].operator != "==" or "*" in specs[0].version:
                raise Refused("%s line %d pins nothing (%s): write name==version" % (path, number, line))
            if pin.marker is None or pin.marker.evaluate(environment):
                pins[canonicalize_name(pin.name)] = specs[0].version
    return pins


def wheel_metadata(path):
    """The METADATA of a wheel, as a list of (field, value)."""
    with zipfile.ZipFile(path) as whl:
        [name] = [n for n in whl.namelist() if n.count("/") == 1 and n.endswith(".dist-info/METADATA")]
        text = whl.read(name).decode("utf-8")
    fields = []
    for line in text.split("\n\n", 1)[0].splitlines():
        if line[:1] in (" ", "\t") and fields:
            fields[-1] = (fields[-1][0], fields[-1][1] + "\n" + line.strip())
        elif ":" in line:
            key, _, value = line.partition(":")
            fields.append((key.strip(), value.strip()))
    return fields


def requirements_on_device(path, extras, environment):
    """The Requires-Dist of a wheel that hold on the device, with the extras asked of it."""
    needed = []
    for key, value in wheel_metadata(path):
        if key != "Requires-Dist":
            continue
        req = Requirement(value)
        if req.marker is None or any(req.marker.evaluate(dict(environment, extra=extra)) for extra in ("",) + tuple(extras)):
            needed.append(req)
    return needed


def record_hashes(path):
    """What a wheel holds, as its RECORD says (path and hash of every file but RECORD itself)."""
    with zipfile.ZipFile(path) as whl:
        [name] = [n for n in whl.namelist() if n.count("/") == 1 and n.endswith(".dist-info/RECORD")]
        rows = whl.read(name).decode("utf-8").splitlines()
    return sorted(row.rsplit(",", 1)[0] for row in rows if row.strip() and not row.startswith(name + ","))


def archive_members(path):
    """The file names in a source distribution (.tar.gz or .zip)."""
    if path.endswith(".zip"):
        with zipfile.ZipFile(path) as archive:
            return archive.namelist()
    with tarfile.open(path) as archive:
        return archive.getnames()


def not_built_from(top):
    """What copying a source tree leaves out: the products of earlier builds, caches, environments, .git."""
    top = os.path.abspath(top)
    at_top = {".git", ".venv", "venv", "build", "dist", ".pytest_cache", ".tox", ".mypy_cache", ".nox"}

    def ignore(folder, names):
        here = os.path.abspath(folder) == top
        return {n for n in names if n == "__pycache__" or (here and (n in at_top or n.endswith(".egg-info")))}
    return ignore


def wheel_key(filename):
    """(canonical name, version, tags) of a wheel file name, or None for anything else."""
    try:
        name, version, _, tags = parse_wheel_filename(filename)
    except InvalidWheelFilename:
        return None
    return name, version, tags


class Wheelhouse:
    def __init__(self, module):
        self.module = module
        p = module.params
        self.machine = p["machine"]
        self.python_version = p["python_version"]
        self.environment = target_environment(self.machine, self.python_version)
        self.glibc_minor = int(p["glibc"].split(".")[1])
        self.tags = target_tags(self.machine, self.python_version, self.glibc_minor)
        self.dest = p["dest"]
        self.pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--no-input"]
        self.staging = tempfile.mkdtemp(prefix="oneos-wheelhouse-")

    def run(self, argv, what):
        rc, out, err = self.module.run_command(argv)
        if rc != 0:
            lines = [line for line in (err or out).splitlines() if line.startswith("ERROR")] or (err or out).strip().splitlines()[-1:]
            raise Refused("%s failed: %s" % (what, " ".join(lines) or "pip exited %d" % rc))
        return out

    def fits(self, filename):
        key = wheel_key(filename)
        return key is not None and bool(key[2] & self.tags)

    def existing(self):
        """{(canonical name, version): path} of the wheels in dest that suit the device."""
        found = {}
        if os.path.isdir(self.dest):
            for filename in sorted(os.listdir(self.dest)):
                key = wheel_key(filename)
                if key and self.fits(filename):
                    found[(key[0], key[1])] = os.path.join(self.dest, filename)
        return found

    def build_oneos(self, source):
        """The oneos wheel, built from the source tree into the staging folder (or the wheel given)."""
        if os.path.isfile(source) and source.endswith(".whl"):
            return source
        if not os.path.isfile(os.path.join(source, "pyproject.toml")):
            raise Refused("source %s is neither a OneOS source tree (no pyproject.toml) nor a wheel" % source)
        # Built from a copy: setuptools writes build/ and *.egg-info into the tree it builds, where a stale
        # build/lib would put deleted modules in the wheel, and two runs at once (two platforms) would collide.
        tree = os.path.join(self.staging, "source")
        shutil.copytree(source, tree, symlinks=True, ignore=not_built_from(source))
        out = os.path.join(self.staging, "oneos")
        argv = self.pip + ["wheel", "--no-deps", "--quiet", "--wheel-dir", out]
        if not self.module.params["build_isolation"]:
            argv += ["--no-build-isolation", "--no-index"]
        self.run(argv + [tree], "building the oneos wheel from %s" % source)
        [wheel] = [os.path.join(out, n) for n in os.listdir(out) if n.endswith(".whl")]
        return wheel

    def download_argv(self, folder):
        argv = self.pip + ["download", "--no-deps", "--quiet", "--only-binary=:all:", "--dest", folder,
                           "--python-version", self.environment["python_version"],
                           "--implementation", "cp", "--abi", "cp" + "".join(self.python_version.split(".")[:2])]
        for plat in platforms(self.machine, self.glibc_minor):
            argv += ["--platform", plat]
        return argv

    def fetch(self, pins):
        """Download the wheels of these pins (name, version) into staging; {(name, version): path}."""
        folder = os.path.join(self.staging, "fetched")
        os.makedirs(folder, exist_ok=True)
        wanted = ["%s==%s" % pin for pin in pins]
        try:
            self.run(self.download_argv(folder) + wanted, "downloading %s" % " ".join(wanted))
        except Refused as e:
            if len(pins) == 1:
                self.build_pure(pins[0], e)
            else:
                for pin in pins:   # which of them: each on its own, an sdist built where it is pure Python
                    try:
                        self.run(self.download_argv(folder) + ["%s==%s" % pin], "downloading %s==%s" % pin)
                    except Refused as one:
                        self.build_pure(pin, one)
        got = {}
        for filename in os.listdir(folder):
            key = wheel_key(filename)
            if key and (key[0], str(key[1])) in {(n, str(Version(v))) for n, v in pins}:
                got[(key[0], key[1])] = os.path.join(folder, filename)
        return got

    def build_pure(self, pin, error):
        """A package with no wheel for the device: built from its sdist if that is pure Python."""
        name, version = pin
        out = os.path.join(self.staging, "built-" + name)
        lacking = "%s==%s has no wheel for %s (Python %s, glibc %s)" % (
            name, version, self.machine, self.python_version, self.module.params["glibc"])
        compiled = (lacking + " and its source is compiled code: pin a version that ships one, "
                    "or mark %s's requirement so that it holds on other machines only" % name)
        try:
            self.run(self.pip + ["download", "--no-deps", "--quiet", "--no-binary", ":all:", "--dest", out,
                                 "%s==%s" % pin], "downloading the source of %s==%s" % pin)
        except Refused:
            raise Refused(lacking + " and no source distribution either (%s)" % error)
        [sdist] = [os.path.join(out, n) for n in os.listdir(out)]
        if any(member.endswith(COMPILED_SOURCES) for member in archive_members(sdist)):
            raise Refused(compiled)   # found before building it: a compiler may be missing or take long
        self.run(self.pip + ["wheel", "--no-deps", "--quiet", "--wheel-dir", out, sdist], "building %s==%s" % pin)
        [built] = [n for n in os.listdir(out) if n.endswith(".whl")]
        if not self.fits(built) or any(tag.platform != "any" for tag in wheel_key(built)[2]):
            raise Refused(compiled)
        shutil.move(os.path.join(out, built), os.path.join(self.staging, "fetched", built))

    def build(self):
        p = self.module.params
        pins = read_constraints(p["constraints"], self.environment)
        have = self.existing()
        oneos = self.build_oneos(p["source"])
        name, version, _ = wheel_key(os.path.basename(oneos))
        if name != "oneos":
            raise Refused("source %s is %s, not oneos" % (p["source"], name))

        # The oneos wheel: replaced only when what it holds differs (a rebuild changes the zip's bytes, not its RECORD).
        chosen = {}
        added = []
        old = have.get((name, version))
        if old and record_hashes(old) == record_hashes(oneos):
            chosen[(name, version)] = old
        else:
            chosen[(name, version)] = oneos
            added.append(os.path.basename(oneos))

        # The closure, breadth first: each level's missing wheels downloaded in one pip run.
        extras_of = {name: frozenset()}
        todo = [(oneos, frozenset(), "oneos")]
        while todo:
            needed = {}
            for path, extras, parent in todo:
                for req in requirements_on_device(path, extras, self.environment):
                    dep = canonicalize_name(req.name)
                    if dep not in pins:
                        raise Refused("%s (required by %s as %s) is not pinned in %s: add %s==VERSION"
                                      % (req.name, parent, req, p["constraints"], req.name))
                    pinned = Version(pins[dep])
                    if not req.specifier.contains(pinned, prereleases=True):
                        raise Refused("%s pins %s==%s but %s requires %s: change the pin"
                                      % (p["constraints"], req.name, pins[dep], parent, req))
                    seen = extras_of.get(dep)
                    more = frozenset(canonicalize_name(e) for e in req.extras)
                    if seen is None or not more <= seen:
                        needed.setdefault(dep, (pinned, set(), parent))[1].update(more | (seen or frozenset()))
                        extras_of[dep] = (seen or frozenset()) | more
            missing = [(dep, str(v)) for dep, (v, _, _) in sorted(needed.items())
                       if (dep, v) not in chosen and (dep, v) not in have]
            fetched = self.fetch(missing) if missing else {}
            todo = []
            for dep, (v, extras, parent) in sorted(needed.items()):
                path = chosen.get((dep, v)) or have.get((dep, v)) or fetched.get((dep, v))
                if path is None:
                    raise Refused("pip downloaded no wheel of %s==%s for %s" % (dep, v, self.machine))
                if (dep, v) not in chosen and (dep, v) not in have:
                    added.append(os.path.basename(path))
                chosen[(dep, v)] = path
                todo.append((path, frozenset(extras), dep))

        keep = {os.path.basename(path) for path in chosen.values()}
        removed = sorted(n for n in (os.listdir(self.dest) if os.path.isdir(self.dest) else [])
                         if n.endswith(".whl") and n not in keep)
        if not self.module.check_mode:
            os.makedirs(self.dest, exist_ok=True)
            for path in chosen.values():
                target = os.path.join(self.dest, os.path.basename(path))
                if os.path.dirname(os.path.abspath(path)) != os.path.abspath(self.dest):
                    shutil.copyfile(path, target + ".part")
                    os.replace(target + ".part", target)
            for filename in removed:
                os.remove(os.path.join(self.dest, filename))
        return dict(changed=bool(added or removed), version=str(version), requirement="oneos==%s" % version,
                    wheels=sorted(keep, key=str.lower), added=sorted(added, key=str.lower), removed=removed)


def main():
    module = AnsibleModule(
        argument_spec=dict(
            source=dict(type="path", required=True),
            constraints=dict(type="path", required=True),
            dest=dict(type="path", required=True),
            machine=dict(type="str", required=True, choices=["x86_64", "aarch64", "armv7l"]),
            python_version=dict(type="str", default="3.11"),
            glibc=dict(type="str", default="2.36"),
            build_isolation=dict(type="bool", default=True),
        ),
        supports_check_mode=True,
    )
    if not HAS_PACKAGING:
        module.fail_json(msg=missing_required_lib("packaging"))
    p = module.params
    if not re.match(r"^3\.\d+(\.\d+)?$", p["python_version"]):
        module.fail_json(msg="python_version %r is not a Python 3 version: write it as 3.11" % p["python_version"])
    match = re.match(r"^2\.(\d+)$", p["glibc"])
    if not match or int(match.group(1)) < OLDEST_MANYLINUX:
        module.fail_json(msg="glibc %r is not a glibc from 2.17 on: write it as 2.36" % p["glibc"])
    house = Wheelhouse(module)
    try:
        result = house.build()
    except Refused as e:
        module.fail_json(msg=str(e))
    finally:
        shutil.rmtree(house.staging, ignore_errors=True)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
