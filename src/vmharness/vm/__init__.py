"""Virtual machines: a VM job in, its outcome out (qemu, the accelerator, snapshots)."""
