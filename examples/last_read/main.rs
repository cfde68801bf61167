//! The `last_read` service of the bookshelf: see `bookshelf_services::last_read`
//! for what it does and the flags it takes.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    bookshelf_services::last_read::main()
}
