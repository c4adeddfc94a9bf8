"""This box: host platform, environment fingerprint, locks, prerequisites, libvmaf build, distribution tarball."""
