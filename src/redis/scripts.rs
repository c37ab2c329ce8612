//! The Lua script registry: every script the service runs, with its name and
//! source, so that each new connection loads them all before its first request
//! (no request pays for a NOSCRIPT round trip) and a NOSCRIPT after a
//! `SCRIPT FLUSH` or a failover is answered by loading the script again.
//!
//! Each script is one file in `src/scripts/`, its KEYS/ARGV contract in its
//! header, declared as a `static` beside the store that runs it.

use std::sync::OnceLock;

use redis::{Script, ScriptInvocation};

/// One Lua script.
pub struct LuaScript {
    name: &'static str,
    code: &'static str,
    compiled: OnceLock<Script>,
}

impl LuaScript {
    /// A script called `name` (its file name without `.lua`) with source `code`.
    pub const fn new(name: &'static str, code: &'static str) -> LuaScript {
        LuaScript {
            name,
            code,
            compiled: OnceLock::new(),
        }
    }

    /// Its name, for logs and metrics.
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// Its source, for SCRIPT LOAD.
    pub fn code(&self) -> &'static str {
        self.code
    }

    /// Its SHA-1, as EVALSHA names it.
    pub fn hash(&self) -> &str {
        self.compiled().get_hash()
    }

    /// An invocation to fill with keys and arguments.
    pub fn prepare(&self) -> ScriptInvocation<'_> {
        self.compiled().prepare_invoke()
    }

    fn compiled(&self) -> &Script {
        self.compiled.get_or_init(|| Script::new(self.code))
    }
}
