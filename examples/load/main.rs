//! The checking load generator of the bookshelf: see
//! `bookshelf_services::load` for what it does and the flags it takes.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    bookshelf_services::load::main()
}
