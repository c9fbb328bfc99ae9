-- Reverts revision 0008: the workers' retention lease and its log of passes.
drop table outbox.maintenance_runs;
drop table outbox.maintenance_leases;
