//! The names of databases and roles by oid: read when a sample names an oid
//! not seen yet, not joined into every read (statements and sessions carry
//! oids; a join would cost the watched server at every sample).

use std::collections::HashMap;

use pgfleet_proto::model::ArcStr;

/// Every database's and role's name, by oid.
const NAMES_SQL: &str = "\
SELECT false, oid, datname::text FROM pg_database
UNION ALL
SELECT true, oid, rolname::text FROM pg_roles";

/// Databases and roles by oid. Oid 0 (no database, no role: a background
/// process) is named "".
#[derive(Debug, Default)]
pub struct Names {
    databases: HashMap<u32, ArcStr>,
    roles: HashMap<u32, ArcStr>,
}

impl Names {
    /// Whether database `dbid` and role `userid` both have a name.
    pub fn knows(&self, dbid: u32, userid: u32) -> bool {
        (dbid == 0 || self.databases.contains_key(&dbid))
            && (userid == 0 || self.roles.contains_key(&userid))
    }

    /// Makes sure every (database, role) of `oids` has a name, reading them
    /// all again if one is new. An oid the server does not know (a database
    /// dropped since) is named by its number.
    pub async fn resolve(
        &mut self,
        client: &deadpool_postgres::Client,
        oids: impl Iterator<Item = (u32, u32)> + Clone,
    ) -> Result<(), tokio_postgres::Error> {
        if oids.clone().all(|(d, u)| self.knows(d, u)) {
            return Ok(());
        }
        let statement = client.prepare_cached(NAMES_SQL).await?;
        let rows = client.query(&statement, &[]).await?;
        self.databases.clear();
        self.roles.clear();
        for row in &rows {
            let role: bool = row.try_get(0)?;
            let oid: u32 = row.try_get(1)?;
            let name: &str = row.try_get(2)?;
            let map = if role {
                &mut self.roles
            } else {
                &mut self.databases
            };
            map.insert(oid, ArcStr::from(name));
        }
        for (d, u) in oids {
            if d != 0 {
                self.databases
                    .entry(d)
                    .or_insert_with(|| ArcStr::from(d.to_string()));
            }
            if u != 0 {
                self.roles
                    .entry(u)
                    .or_insert_with(|| ArcStr::from(u.to_string()));
            }
        }
        Ok(())
    }

    /// The name of database `oid`.
    pub fn database(&self, oid: u32) -> ArcStr {
        name(&self.databases, oid)
    }

    /// The name of role `oid`.
    pub fn role(&self, oid: u32) -> ArcStr {
        name(&self.roles, oid)
    }
}

fn name(map: &HashMap<u32, ArcStr>, oid: u32) -> ArcStr {
    match map.get(&oid) {
        Some(name) => name.clone(),
        None if oid == 0 => ArcStr::new(),
        None => ArcStr::from(oid.to_string()),
    }
}
