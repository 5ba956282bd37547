package kv

import (
	"fmt"
)

// checkOps refuses transactions a store cannot run.
func checkOps(ops []Op) error {
	if len(ops) == 0 || len(ops) > MaxTxnOps {
		return fmt.Errorf("a transaction holds 1 to %d operations, not %d", MaxTxnOps, len(ops))
	}
	seen := map[string]bool{}
	for _, op := range ops {
		if seen[op.Key] {
			return fmt.Errorf("a transaction changes key %s twice", op.Key)
		}
		seen[op.Key] = true
		if (op.Check || op.Delete) && op.Version == Any {
			return fmt.Errorf("a check or delete of %s needs a version (or 0), not Any", op.Key)
		}
		if op.Check && op.Delete {
			return fmt.Errorf("an operation on %s both checks and deletes", op.Key)
		}
	}
	return nil
}
