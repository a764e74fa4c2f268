#!/usr/bin/env python3
"""Writes NAME.iomem beside each memmaps/NAME.json that has an `e820` list,
and nonroot.iomem (one of them as a user other than root sees it).

The files have the shape of a real /proc/iomem: one top-level entry per e820
entry, named as the kernel names e820 types, plus nested entries (kernel
image, System ROM, APIC/HPET inside reserved ranges) and PCI host bridge
windows in the holes. Unlike a real kernel, they keep page 0 in System RAM
(the kernel reserves it, so a real /proc/iomem starts System RAM at 0x1000)
so that their usable RAM equals the JSON `usable` exactly.

Run from this directory: python3 make_iomem.py
"""
import json
import pathlib

NAMES = {
    "usable": "System RAM",
    "reserved": "Reserved",
    "ACPI data": "ACPI Tables",
    "ACPI NVS": "ACPI Non-volatile Storage",
    "unusable": "Unusable memory",
    "soft reserved": "Soft Reserved",
}
DEVICES = [
    (0xFEC00000, 0xFEC003FF, "IOAPIC 0"),
    (0xFED00000, 0xFED003FF, "HPET 0"),
    (0xFEE00000, 0xFEE00FFF, "Local APIC"),
]
KERNEL = [
    (0x01000000, 0x01E0268F, "Kernel code"),
    (0x02000000, 0x02A3AFFF, "Kernel rodata"),
    (0x02C00000, 0x030C3B3F, "Kernel data"),
    (0x03535000, 0x037FFFFF, "Kernel bss"),
]


def iomem(e820):
    # [first, last, name, children]
    top = [[s, e - 1, NAMES.get(t, "Unknown E820 type"), []] for s, e, t in e820]
    for entry in top:
        if entry[2] == "System RAM" and entry[0] <= 0x01000000 and entry[1] >= 0x037FFFFF:
            entry[3].extend(KERNEL)
            break
    for entry in top:
        if entry[2] == "Reserved" and entry[0] <= 0xF0000 and entry[1] >= 0xFFFFF:
            entry[3].append((0xF0000, 0xFFFFF, "System ROM"))
    for first, last, name in DEVICES:
        inside = [t for t in top if t[0] <= first and last <= t[1]]
        if inside:
            inside[0][3].append((first, last, name))
        elif not any(t[0] <= last and first <= t[1] for t in top):
            top.append([first, last, name, []])
    top.sort()
    # The largest hole between 2 GiB and 4 GiB is the low PCI window.
    gaps = []
    prev_end = 0x80000000
    for first, last, _, _ in top:
        if first > prev_end and first <= 0x100000000:
            gaps.append((first - prev_end, prev_end, first - 1))
        prev_end = max(prev_end, last + 1)
    if gaps:
        _, first, last = max(gaps)
        children = [(first, first + 0xFFFFFF, "0000:00:02.0")] if last - first >= 0xFFFFFF else []
        top.append([first, last, "PCI Bus 0000:00", children])
    # A 64-bit PCI window above everything, on a 64 GiB boundary.
    high = (max(t[1] for t in top) + 1 + (1 << 36) - 1) >> 36 << 36
    top.append([high, high + (1 << 38) - 1, "PCI Bus 0000:00",
                [(high, high + 0x7FFFF, "0000:00:01.0")]])
    top.sort()
    out = []
    for first, last, name, children in top:
        out.append(f"{first:08x}-{last:08x} : {name}")
        for cfirst, clast, cname in sorted(children):
            out.append(f"  {cfirst:08x}-{clast:08x} : {cname}")
    return "\n".join(out) + "\n"


def main():
    here = pathlib.Path(__file__).parent
    for path in sorted((here / "memmaps").glob("*.json")):
        doc = json.loads(path.read_text())
        if doc.get("e820"):
            path.with_suffix(".iomem").write_text(iomem(doc["e820"]))
    sample = (here / "memmaps" / "05-lenovo-sr650v2-icx-2s-512g.iomem").read_text()
    zeroed = []
    for line in sample.splitlines():
        indent = line[: len(line) - len(line.lstrip())]
        zeroed.append(f"{indent}00000000-00000000 : {line.split(' : ', 1)[1]}")
    (here / "nonroot.iomem").write_text("\n".join(zeroed) + "\n")


if __name__ == "__main__":
    main()
