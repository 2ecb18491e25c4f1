//! The names of the databases and roles that statements ran in and as, by
//! oid: read when a statement names an oid not seen yet, not joined into
//! every read.

use std::collections::HashMap;

use super::delta::{Counters, Key};
use super::sql::NAMES_SQL;

/// Databases and roles by oid.
#[derive(Debug, Default)]
pub struct Names {
    databases: HashMap<u32, String>,
    roles: HashMap<u32, String>,
}

impl Names {
    /// Makes sure every database and role of `entries` has a name, reading
    /// them all again if one is new. An oid the server does not know (a
    /// database dropped since) is named by its number.
    pub async fn resolve(
        &mut self,
        client: &deadpool_postgres::Client,
        entries: &[(Key, Counters)],
    ) -> Result<(), tokio_postgres::Error> {
        if entries.iter().all(|(k, _)| {
            self.databases.contains_key(&k.dbid) && self.roles.contains_key(&k.userid)
        }) {
            return Ok(());
        }
        let statement = client.prepare_cached(NAMES_SQL).await?;
        let rows = client.query(&statement, &[]).await?;
        self.databases.clear();
        self.roles.clear();
        for row in &rows {
            let role: bool = row.try_get(0)?;
            let oid: u32 = row.try_get(1)?;
            let name: String = row.try_get(2)?;
            if role {
                self.roles.insert(oid, name);
            } else {
                self.databases.insert(oid, name);
            }
        }
        for (k, _) in entries {
            self.databases
                .entry(k.dbid)
                .or_insert_with(|| k.dbid.to_string());
            self.roles
                .entry(k.userid)
                .or_insert_with(|| k.userid.to_string());
        }
        Ok(())
    }

    /// The name of database `oid`.
    pub fn database(&self, oid: u32) -> String {
        self.databases
            .get(&oid)
            .cloned()
            .unwrap_or_else(|| oid.to_string())
    }

    /// The name of role `oid`.
    pub fn role(&self, oid: u32) -> String {
        self.roles
            .get(&oid)
            .cloned()
            .unwrap_or_else(|| oid.to_string())
    }
}
