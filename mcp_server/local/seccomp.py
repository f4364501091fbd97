"""The seccomp filter every process in a devbox runs under, and the thread that hands it on.

bubblewrap sets `no_new_privs` on the sandbox's first process but installs no seccomp filter
unless given one (`--seccomp FD`), and executions, which `nsenter` the sandbox, got neither.
This module builds one filter (with libseccomp, through ctypes: no compiler, no Python binding
to install) that bubblewrap loads for the first process, and `harden_this_thread` loads the same
filter, after `no_new_privs`, into a thread of the backend: both are per-thread attributes that
a child inherits, so every process that thread starts (a devbox's fork server and the commands it
starts, or nsenter and the command's bash) carries them without an extra exec or a slow fork (see
`spawner`).

What it refuses is kernel surface a devbox has no use for, after flatpak's filter, the usual
companion of bubblewrap: the host's kernel log and keyrings, kernel modules and kexec, new
user namespaces (bubblewrap already forbids them for a root backend; this makes a non-root one
the same), mounts (nsenter needs `setns` and `chroot`, so those stay), clone3 (whose flags a
filter cannot read: ENOSYS makes libc fall back to clone), typing into a terminal (TIOCSTI,
TIOCLINUX), and setting a setuid bit (chmod and its kin; as the Nix build sandbox does): the
devbox user is the backend's uid on the host, so such a file would be a setuid program of that
uid in the data directory (see `storage`). A file created with a setuid mode is harmless: the
kernel clears the bit at the first write by a process without CAP_FSETID. Setgid stays allowed
(`chmod g+s` on shared directories is common). Everything else a development machine does
(ptrace for debuggers, perf, NUMA calls) is allowed.

Devboxes with a system of their own (a root backend: ids mapped to an unprivileged range, see
`idmap`) get a second profile (`own_system`): what protected the host from a devbox user that
was the host's root (mounts, user namespaces, setuid bits) is the devbox's root's to use in its
own namespaces, and their executions run without `no_new_privs`, which setuid programs (sudo)
need; the rest of the list still applies.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import functools
import os

# Actions and constants of libseccomp's API (seccomp.h) and the kernel's (linux/seccomp.h, prctl.h).
_ACT_ALLOW = 0x7FFF0000
_CMP_MASKED_EQ = 7
_PR_SET_NO_NEW_PRIVS = 38
_PR_SET_SECCOMP = 22
_SECCOMP_MODE_FILTER = 2
_CLONE_NEWUSER = 0x10000000
_TIOCSTI = 0x5412
_TIOCLINUX = 0x541C
_S_ISUID = 0o4000
# Where each mode-setting call has its mode: a setuid bit there is refused.
_MODE_ARGUMENT = {"chmod": 1, "fchmod": 1, "fchmodat": 2, "fchmodat2": 2}
# Other ABIs the native one can run (a 32-bit program on x86_64): filtered too, not killed.
_COMPAT_ARCHES = {
    0xC000003E: (0x40000003, 0x4000003E),  # x86_64: x86, x32
    0xC00000B7: (0x40000028,),  # aarch64: arm
}

_REFUSED: dict[str, int] = {
    # The host's kernel log, accounting, quotas and keyrings.
    **dict.fromkeys(("syslog", "acct", "quotactl", "add_key", "keyctl", "request_key"), errno.EPERM),
    # The kernel itself: modules, kexec, reboot, swap, BPF programs; and relics and exploit helpers.
    **dict.fromkeys(
        ("init_module", "finit_module", "delete_module", "kexec_load", "kexec_file_load", "reboot",
         "swapon", "swapoff", "bpf", "uselib", "userfaultfd", "open_by_handle_at"),
        errno.EPERM,
    ),  # fmt: skip
    # New namespaces and mounts (clone with CLONE_NEWUSER is refused below).
    **dict.fromkeys(("unshare", "mount", "umount", "umount2", "pivot_root"), errno.EPERM),
    **dict.fromkeys(
        ("clone3", "open_tree", "move_mount", "fsopen", "fsconfig", "fsmount", "fspick", "mount_setattr"),
        errno.ENOSYS,
    ),
}


class SeccompUnavailable(Exception):
    """The filter cannot be built or loaded here; the message says what to install."""


class _ArgCmp(ctypes.Structure):
    _fields_ = [
        ("arg", ctypes.c_uint),
        ("op", ctypes.c_int),
        ("datum_a", ctypes.c_uint64),
        ("datum_b", ctypes.c_uint64),
    ]


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


def _errno_action(code: int) -> int:
    return 0x00050000 | (code & 0xFFFF)


# Refused on the host's system only: on a system of its own (an unprivileged id range), root
# inside may mount in its own mount namespace, make user namespaces (browsers' sandboxes, rootless
# containers) and setuid files (dpkg installs them; they raise a process to the devbox's root only).
_HOST_SYSTEM_ONLY = (
    "unshare", "mount", "umount", "umount2", "pivot_root",
    "open_tree", "move_mount", "fsopen", "fsconfig", "fsmount", "fspick", "mount_setattr",
)  # fmt: skip


@functools.cache
def program(own_system: bool = False) -> bytes:
    """The filter as a classic BPF program (what `bwrap --seccomp FD` reads and prctl loads).

    `own_system`: the profile of a devbox with a system of its own (see `_HOST_SYSTEM_ONLY`).
    """
    name = ctypes.util.find_library("seccomp") or "libseccomp.so.2"
    try:
        lib = ctypes.CDLL(name)
    except OSError:
        raise SeccompUnavailable(
            "libseccomp is not installed (devboxes run under a seccomp filter it builds); "
            "install it with `apt-get install libseccomp2`"
        ) from None
    lib.seccomp_init.restype = ctypes.c_void_p
    lib.seccomp_init.argtypes = [ctypes.c_uint32]
    lib.seccomp_release.argtypes = [ctypes.c_void_p]
    lib.seccomp_arch_native.restype = ctypes.c_uint32
    lib.seccomp_arch_add.argtypes = [ctypes.c_void_p, ctypes.c_uint32]
    lib.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
    lib.seccomp_rule_add_array.argtypes = [
        ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int, ctypes.c_uint, ctypes.POINTER(_ArgCmp),
    ]  # fmt: skip
    lib.seccomp_export_bpf.argtypes = [ctypes.c_void_p, ctypes.c_int]
    ctx = lib.seccomp_init(_ACT_ALLOW)
    if not ctx:
        raise SeccompUnavailable("libseccomp could not create a filter")
    try:
        for arch in _COMPAT_ARCHES.get(lib.seccomp_arch_native(), ()):
            lib.seccomp_arch_add(ctx, arch)  # fails harmlessly where the kernel lacks that ABI

        def refuse(syscall: str, code: int, *conditions: _ArgCmp) -> None:
            number = lib.seccomp_syscall_resolve_name(syscall.encode())
            if number == -1:  # not a system call of any architecture libseccomp knows: nothing to refuse
                return
            array = (_ArgCmp * len(conditions))(*conditions) if conditions else None
            rc = lib.seccomp_rule_add_array(ctx, _errno_action(code), number, len(conditions), array)
            if rc < 0 and rc != -errno.EDOM:  # EDOM: the call does not exist on the native architecture
                raise SeccompUnavailable(f"libseccomp refused the rule for {syscall}: {os.strerror(-rc)}")

        for syscall, code in _REFUSED.items():
            if not (own_system and syscall in _HOST_SYSTEM_ONLY):
                refuse(syscall, code)
        for request in (_TIOCSTI, _TIOCLINUX):
            refuse("ioctl", errno.EPERM, _ArgCmp(1, _CMP_MASKED_EQ, 0xFFFFFFFF, request))
        if not own_system:
            refuse("clone", errno.EPERM, _ArgCmp(0, _CMP_MASKED_EQ, _CLONE_NEWUSER, _CLONE_NEWUSER))
            for syscall, index in _MODE_ARGUMENT.items():
                refuse(syscall, errno.EPERM, _ArgCmp(index, _CMP_MASKED_EQ, _S_ISUID, _S_ISUID))
        fd = os.memfd_create("seccomp", os.MFD_CLOEXEC)
        try:
            rc = lib.seccomp_export_bpf(ctx, fd)
            if rc < 0:
                raise SeccompUnavailable(f"libseccomp could not export the filter: {os.strerror(-rc)}")
            size = os.lseek(fd, 0, os.SEEK_END)
            return os.pread(fd, size, 0)
        finally:
            os.close(fd)
    finally:
        lib.seccomp_release(ctx)


def unavailable_reason() -> str | None:
    try:
        program()
    except SeccompUnavailable as exc:
        return str(exc)
    return None


def memfd(own_system: bool = False) -> int:
    """A memfd holding the program, for `bwrap --seccomp FD` (which reads it to the end and closes it)."""
    fd = os.memfd_create("seccomp", 0)
    os.write(fd, program(own_system))
    os.lseek(fd, 0, os.SEEK_SET)
    return fd


def harden_this_thread(own_system: bool = False) -> None:
    """Set no_new_privs and load the filter on the calling thread (both for good; children inherit them).

    Only this thread: the rest of the backend keeps its privileges (a non-root backend may need a
    setuid bubblewrap, which no_new_privs would disarm). `own_system`: the thread that starts
    commands in devboxes with a system of their own: their filter, and no `no_new_privs` (sudo
    needs setuid to work; loading a filter without it takes the root backend's CAP_SYS_ADMIN).
    """
    code = program(own_system)
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_void_p, ctypes.c_ulong, ctypes.c_ulong]
    if not own_system and libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, None, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_NO_NEW_PRIVS)")
    buffer = ctypes.create_string_buffer(code, len(code))
    fprog = _SockFprog(len(code) // 8, ctypes.cast(buffer, ctypes.c_void_p))
    if libc.prctl(_PR_SET_SECCOMP, _SECCOMP_MODE_FILTER, ctypes.byref(fprog), 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_SECCOMP) (is the kernel built with CONFIG_SECCOMP_FILTER?)")
