#!/bin/sh
# Assembles the final images' root filesystem in /rootfs (run by the Dockerfiles' builder
# stage, as root, on the Debian base): Debian's Python 3.11 and OpenMP runtime, exactly the
# shared libraries they and the virtual environment in /opt/stepchain load, the user, and
# nothing else: no shell, no package manager, no coreutils. The images start `stepchain`
# directly (exec form), so none is needed at run time.
#
# Scanners and licences: each Debian package a file came from gets its dpkg status entry
# (/var/lib/dpkg/status.d/<package>, as distroless images do) and its copyright file.
set -eu
ROOTFS=/rootfs
VENV=/opt/stepchain
UID_GID=10001
# Python and its standard library, the OpenMP runtime, time zones, MIME types.
PACKAGES="python3.11-minimal libpython3.11-minimal libpython3.11-stdlib python3-minimal
libpython3-stdlib python3.11 python3 libgomp1 media-types"

mkdir -p "$ROOTFS/usr/bin" "$ROOTFS/usr/lib" "$ROOTFS/usr/lib64" "$ROOTFS/usr/sbin" \
    "$ROOTFS/etc" "$ROOTFS/var/lib/dpkg/status.d" "$ROOTFS/tmp" "$ROOTFS$VENV"
# Debian 12 is merged-/usr: /lib, /lib64 and /bin are links into /usr.
for dir in bin lib lib64 sbin; do ln -sfn "usr/$dir" "$ROOTFS/$dir"; done
chmod 1777 "$ROOTFS/tmp"

# copy PATH: the file or link at PATH, at the same place under /rootfs.
copy() {
    mkdir -p "$ROOTFS$(dirname "$1")"
    cp -a "$1" "$ROOTFS$1"
}

owners=""
for pkg in $PACKAGES; do
    owners="$owners $pkg"
    dpkg-query -L "$pkg" | while read -r path; do
        case "$path" in
            /usr/share/doc/*|/usr/share/man/*|/usr/share/lintian/*|/usr/share/binfmts/*) continue ;;
            # The interpreter only: not pydoc, pdb, py3compile and the like.
            /usr/bin/python3|/usr/bin/python3.11) ;;
            /usr/bin/*|/usr/sbin/*) continue ;;
        esac
        if [ -L "$path" ] || [ -f "$path" ]; then
            copy "$path"
            # Bytecode Debian compiles at installation (not in the package's file list).
            case "$path" in
                *.py)
                    base=$(basename "$path" .py)
                    for pyc in "$(dirname "$path")/__pycache__/$base".cpython-311*.pyc; do
                        if [ -f "$pyc" ]; then copy "$pyc"; fi
                    done ;;
            esac
        fi
    done
done

# The shared libraries every ELF file of the image loads (ldd gives the whole closure); those
# the wheels bundle (numpy.libs, pillow.libs, ...) are already in the virtual environment.
find "$ROOTFS" "$VENV" -type f \( -name '*.so' -o -name '*.so.*' -o -perm -u+x \) | while read -r elf; do
    ldd "$elf" 2>/dev/null || true
done | sed -n -E 's#^\s*(\S+ => )?(/[^ ]+) \(0x[0-9a-f]+\)$#\2#p' | sort -u | while read -r lib; do
    case "$lib" in "$VENV"/*) continue ;; esac
    real=$(readlink -f "$lib")
    # The soname path (what the loader asks for) holds the file itself.
    mkdir -p "$ROOTFS$(dirname "$lib")"
    if [ ! -e "$ROOTFS$lib" ]; then cp -L "$lib" "$ROOTFS$lib"; fi
    # dpkg knows a file by the path its package installed it at (/lib/... or /usr/lib/...).
    for known in "$lib" "$real"; do
        pkg=$(dpkg-query -S "$known" 2>/dev/null | head -n 1 | cut -d: -f1 || true)
        if [ -n "$pkg" ]; then echo "$pkg" >>/tmp/rootfs-owners; break; fi
    done
done
if [ -f /tmp/rootfs-owners ]; then owners="$owners $(sort -u /tmp/rootfs-owners | tr '\n' ' ')"; fi

for pkg in $(echo "$owners" | tr ' ' '\n' | sed '/^$/d' | sort -u); do
    dpkg-query -s "$pkg" >"$ROOTFS/var/lib/dpkg/status.d/$pkg"
    name=${pkg%%:*}
    if [ -f "/usr/share/doc/$name/copyright" ]; then copy "/usr/share/doc/$name/copyright"; fi
done

# Users: root and stepchain (the pods' runAsUser); no login shell exists.
cat >"$ROOTFS/etc/passwd" <<EOF
root:x:0:0:root:/root:/usr/sbin/nologin
stepchain:x:$UID_GID:$UID_GID:stepchain:/tmp:/usr/sbin/nologin
nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin
EOF
cat >"$ROOTFS/etc/group" <<EOF
root:x:0:
stepchain:x:$UID_GID:
nogroup:x:65534:
EOF
cp /etc/os-release "$ROOTFS/etc/os-release" 2>/dev/null || cp /usr/lib/os-release "$ROOTFS/etc/os-release"
echo "rootfs: $(du -sh "$ROOTFS" | cut -f1), packages:$owners" | tr -s ' '
