//! SQLite store (placeholder; being implemented).
/// SQLite store.

pub struct SqliteStore;
impl super::SessionStore for SqliteStore {
    fn append<'a>(&'a self, _: &'a str, _: &'a str, _: Vec<super::StoredMessage>) -> futures::future::BoxFuture<'a, Result<(), crate::AgentError>> { todo!() }
    fn history<'a>(&'a self, _: &'a str, _: Option<u32>) -> futures::future::BoxFuture<'a, Result<Vec<super::StoredMessage>, crate::AgentError>> { todo!() }
    fn list<'a>(&'a self, _: Option<&'a str>, _: u32) -> futures::future::BoxFuture<'a, Result<Vec<super::SessionSummary>, crate::AgentError>> { todo!() }
    fn exists<'a>(&'a self, _: &'a str) -> futures::future::BoxFuture<'a, Result<bool, crate::AgentError>> { todo!() }
}
impl SqliteStore {
    /// Opens the database.
    pub async fn open(_path: &str) -> Result<Self, crate::AgentError> { todo!() }
}
