//! The `books` service: see `bookshelf_services::books_service`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    bookshelf_services::books_service::main()
}
