//! A small domain shared by the core's behaviour tests: accounts that take
//! deposits, and views that record exactly what they applied.

#![allow(dead_code)]

use std::collections::BTreeSet;

use bookshelf_core::{async_trait, Aggregate, DomainEvent, Envelope, EventId, Metadata, NewEvent, View};
use serde::{Deserialize, Serialize};

#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
pub struct Account {
    pub opened: bool,
    pub balance: i64,
}

#[derive(Debug, Clone)]
pub enum AccountCommand {
    Open,
    Deposit(i64),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum AccountEvent {
    Opened,
    Deposited { amount: i64 },
}

impl DomainEvent for AccountEvent {}

#[derive(Debug, PartialEq, thiserror::Error)]
pub enum AccountError {
    #[error("the account is already open")]
    AlreadyOpen,
    #[error("the account is not open")]
    NotOpen,
    #[error("a deposit must be positive, got {0}")]
    NotPositive(i64),
}

#[async_trait]
impl Aggregate for Account {
    const CATEGORY: &'static str = "account";
    type Command = AccountCommand;
    type Event = AccountEvent;
    type Error = AccountError;
    type Services = ();

    async fn handle(&self, command: &AccountCommand, _: &()) -> Result<Vec<AccountEvent>, AccountError> {
        match command {
            AccountCommand::Open if self.opened => Err(AccountError::AlreadyOpen),
            AccountCommand::Open => Ok(vec![AccountEvent::Opened]),
            AccountCommand::Deposit(_) if !self.opened => Err(AccountError::NotOpen),
            AccountCommand::Deposit(amount) if *amount <= 0 => Err(AccountError::NotPositive(*amount)),
            AccountCommand::Deposit(amount) => Ok(vec![AccountEvent::Deposited { amount: *amount }]),
        }
    }

    fn apply(&mut self, event: &AccountEvent) {
        match event {
            AccountEvent::Opened => self.opened = true,
            AccountEvent::Deposited { amount } => self.balance += amount,
        }
    }
}

/// Records every position it applied, so that a test can see a gap or a
/// repeat, and sums the deposits.
#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
pub struct Ledger {
    pub applied: Vec<u64>,
    pub total: i64,
}

impl View for Ledger {
    type Event = AccountEvent;
    fn apply(&mut self, event: Envelope<AccountEvent>) {
        self.applied.push(event.position.0);
        if let AccountEvent::Deposited { amount } = event.payload {
            self.total += amount;
        }
    }
}

impl Ledger {
    /// Whether every position was applied exactly once, in order.
    pub fn applied_each_once_in_order(&self) -> bool {
        self.applied.windows(2).all(|w| w[0] < w[1])
            && self.applied.iter().collect::<BTreeSet<_>>().len() == self.applied.len()
    }
}

pub fn deposit(amount: i64) -> NewEvent {
    raw_event("Deposited", 1, &format!(r#"{{"amount":{amount}}}"#))
}

pub fn raw_event(event_type: &str, schema_version: u32, payload: &str) -> NewEvent {
    NewEvent {
        event_id: EventId::new(),
        event_type: event_type.into(),
        schema_version,
        metadata: Metadata::default(),
        payload: serde_json::value::RawValue::from_string(payload.into()).expect("test payloads are valid JSON"),
    }
}
