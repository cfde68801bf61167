//! The bookshelf's gateway: see `bookshelf_services::gateway` for what it
//! does and the flags it takes.

/// mimalloc: a proxy allocates and frees small buffers for every request,
/// which glibc's allocator spent about a tenth of the gateway's time on.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    bookshelf_services::gateway::main()
}
