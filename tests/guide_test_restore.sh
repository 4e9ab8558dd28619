#!/bin/bash
# Monthly backup test restore

TEST_DIR="/var/lib/rusty-db/restore-test"
BACKUP_FILE="/backups/full_latest.backup"
LOG_FILE="/var/log/backup-test-$(date +%Y%m%d).log"

echo "Starting backup restore test at $(date)" | tee $LOG_FILE

# 1. Restore to test directory
rusty-db-restore --input $BACKUP_FILE \
  --data-dir $TEST_DIR \
  --verify-encryption \
  --integrity-check >> $LOG_FILE 2>&1

if [ $? -eq 0 ]; then
    echo "✓ Restore successful" | tee -a $LOG_FILE
else
    echo "✗ Restore failed" | tee -a $LOG_FILE
    exit 1
fi

# 2. Start database in test mode (separate port)
rusty-db-server --data-dir $TEST_DIR --port 5433 &
TEST_PID=$!
sleep 5

# 3. Verify database health
HEALTH=$(curl -s http://localhost:8080/api/v1/admin/health | jq -r '.status')

if [ "$HEALTH" = "healthy" ]; then
    echo "✓ Database health check passed" | tee -a $LOG_FILE
else
    echo "✗ Database health check failed" | tee -a $LOG_FILE
fi

# 4. Run validation queries
rusty-db-cli --port 5433 --command "SELECT COUNT(*) FROM customers;" >> $LOG_FILE 2>&1

# 5. Cleanup
kill $TEST_PID
rm -rf $TEST_DIR

echo "Backup test completed at $(date)" | tee -a $LOG_FILE
