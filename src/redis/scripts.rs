//! The Lua script registry: every script the service runs, with its name and
//! source, so that each new connection loads them all before its first request
//! (no request pays for a NOSCRIPT round trip) and a NOSCRIPT after a
//! `SCRIPT FLUSH` or a failover is answered by loading the script again.
//!
//! Each script is one file in `src/scripts/`, its KEYS/ARGV contract in its
//! header, declared as a `static` beside the store that runs it.

use std::sync::OnceLock;

use redis::{Cmd, Script, ToRedisArgs};

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
        self.compiled.get_or_init(|| Script::new(self.code)).get_hash()
    }

    /// `SCRIPT LOAD` of its source (on a Cluster, sent to every primary).
    pub fn load(&self) -> Cmd {
        let mut command = redis::cmd("SCRIPT");
        command.arg("LOAD").arg(self.code);
        command
    }

    /// An invocation to fill with keys and arguments.
    pub fn prepare(&'static self) -> Invocation {
        Invocation {
            script: self,
            keys: Vec::new(),
            args: Vec::new(),
        }
    }
}

/// One call of a script: its keys and arguments. Sent as EVALSHA, and loaded
/// again when Redis answers NOSCRIPT (see [`crate::redis::Redis::run`]).
pub struct Invocation {
    script: &'static LuaScript,
    keys: Vec<Vec<u8>>,
    args: Vec<Vec<u8>>,
}

impl Invocation {
    /// Adds a key (`KEYS[n]`).
    pub fn key(&mut self, key: impl ToRedisArgs) -> &mut Invocation {
        key.write_redis_args(&mut self.keys);
        self
    }

    /// Adds an argument (`ARGV[n]`).
    pub fn arg(&mut self, arg: impl ToRedisArgs) -> &mut Invocation {
        arg.write_redis_args(&mut self.args);
        self
    }

    /// The script it calls.
    pub fn script(&self) -> &'static LuaScript {
        self.script
    }

    /// The EVALSHA command; a Cluster routes it by its keys.
    pub fn evalsha(&self) -> Cmd {
        let mut command = redis::cmd("EVALSHA");
        command
            .arg(self.script.hash())
            .arg(self.keys.len())
            .arg(&self.keys)
            .arg(&self.args);
        command
    }
}
