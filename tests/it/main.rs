//! The integration tests: one binary (links are slow on two cores), one module per capability.

mod support;

mod breaker;
mod db;
mod deploy;
mod health;
mod hostile;
mod lifecycle;
mod loadgen;
mod ops;
mod prometheus;
mod readme;
mod red;
mod shed;
mod trace;
