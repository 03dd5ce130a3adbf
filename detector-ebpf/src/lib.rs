//! Empty library target: lets `detector`'s build script depend on this crate so that
//! cargo rebuilds the eBPF object when its sources change (see aya-build).
#![no_std]
