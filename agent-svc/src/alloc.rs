//! Both binaries' global allocator and its options, declared in each `main.rs`
//! by [`global_allocator!`](crate::global_allocator) (gateway-http runs
//! agent-svc inside itself in embedded mode, so it takes the same one):
//! mimalloc, with feature `mimalloc` (on by default); without it, the system's
//! (for valgrind's heap tools). Libraries and tests keep the system's. glibc's
//! free lists and their consolidation were ~10% of the CPU of a stable-session
//! turn (many small messages, freed on other threads).

#[cfg(feature = "mimalloc")]
pub use mimalloc::MiMalloc;

/// Declares the binary's global allocator (with its crate feature `mimalloc`,
/// which must turn on agent-svc's) and runs [`configure`] as a constructor:
/// an `.init_array` entry on Linux, before the Rust runtime's first allocation.
#[macro_export]
macro_rules! global_allocator {
    () => {
        #[cfg(feature = "mimalloc")]
        #[global_allocator]
        static ALLOCATOR: $crate::alloc::MiMalloc = $crate::alloc::MiMalloc;

        #[used]
        #[cfg_attr(target_os = "linux", link_section = ".init_array")]
        static CONFIGURE_ALLOCATOR: unsafe extern "C" fn() = $crate::alloc::configure;
    };
}

/// `mi_option_arena_eager_commit` (the same index in mimalloc 2 and 3).
#[cfg(feature = "mimalloc")]
const ARENA_EAGER_COMMIT: libmimalloc_sys::mi_option_t = 4;

/// Sets the allocator's options. Each binary runs it as a constructor
/// ([`global_allocator!`](crate::global_allocator)), before the Rust runtime's
/// first allocation makes mimalloc reserve its first arena with the defaults;
/// so it must not allocate.
///
/// mimalloc commits a whole arena up front on Linux by default; memory there is
/// never decommitted, and a block carved out of it stays in RSS once touched,
/// freed or not. Committing on demand instead cut the RSS per open stream by
/// about a third and the idle RSS of both services by half (10,000 held
/// streams: see the README's benchmark). `MIMALLOC_ARENA_EAGER_COMMIT` (or its
/// old name `MIMALLOC_EAGER_REGION_COMMIT`, spelled in capitals) in the
/// environment still decides when it is set.
///
/// # Safety
///
/// Only while no other thread can change the environment (it reads it with
/// `getenv`): before `main`, as the constructors do.
pub unsafe extern "C" fn configure() {
    #[cfg(feature = "mimalloc")]
    {
        extern "C" {
            fn getenv(name: *const std::ffi::c_char) -> *mut std::ffi::c_char;
        }
        // SAFETY: getenv reads the environment with a NUL-terminated name (no other thread
        // exists yet to change it); mi_option_set sets one integer option.
        unsafe {
            if getenv(c"MIMALLOC_ARENA_EAGER_COMMIT".as_ptr()).is_null()
                && getenv(c"MIMALLOC_EAGER_REGION_COMMIT".as_ptr()).is_null()
            {
                libmimalloc_sys::mi_option_set(ARENA_EAGER_COMMIT, 0);
            }
        }
    }
}
