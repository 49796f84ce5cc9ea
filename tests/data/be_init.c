/* /init for tests/test_boot_be.py: the big-endian boots have no busybox (Debian's big-endian
 * ppc64 packages are in its ports archive), so this does what boot.py's scripts do, in C, and
 * prints the same markers parse_console() reads:
 *   mount proc, sysfs, tracefs;
 *   load each module named in /modules/order, in order: MCOUNTRW-INSMOD <name> rc=<n>;
 *   MCOUNTRW-AFF-BEGIN, available_filter_functions, MCOUNTRW-AFF-END;
 *   the function tracer on: MCOUNTRW-TRACER rc=<n>, MCOUNTRW-ENABLED <lines of enabled_functions>;
 *   the tracer off, MCOUNTRW-DONE, power off.
 * Built static by the big-endian cross gcc when the tests run. */
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/reboot.h>
#include <sys/syscall.h>
#include <unistd.h>

#define TRACING "/sys/kernel/tracing/"

static void copy_out(const char *path)
{
	char buf[4096];
	ssize_t n;
	int fd = open(path, O_RDONLY);

	if (fd < 0)
		return;
	while ((n = read(fd, buf, sizeof(buf))) > 0)
		fwrite(buf, 1, (size_t)n, stdout);
	close(fd);
}

static long count_lines(const char *path)
{
	char buf[4096];
	ssize_t n;
	long lines = 0;
	int fd = open(path, O_RDONLY);

	if (fd < 0)
		return -1;
	while ((n = read(fd, buf, sizeof(buf))) > 0)
		for (ssize_t i = 0; i < n; i++)
			lines += buf[i] == '\n';
	close(fd);
	return lines;
}

static int write_file(const char *path, const char *text)
{
	int fd = open(path, O_WRONLY | O_TRUNC);
	int ok = fd >= 0 && write(fd, text, strlen(text)) == (ssize_t)strlen(text);

	if (fd >= 0)
		close(fd);
	return ok ? 0 : 1;
}

static void load_modules(void)
{
	char name[256], path[300];
	FILE *order = fopen("/modules/order", "r");

	while (order && fgets(name, sizeof(name), order)) {
		name[strcspn(name, "\n")] = 0;
		snprintf(path, sizeof(path), "/modules/%s", name);
		int fd = open(path, O_RDONLY);
		long rc = fd < 0 ? -1 : syscall(SYS_finit_module, fd, "", 0);
		printf("MCOUNTRW-INSMOD %s rc=%ld\n", name, rc);
		if (fd >= 0)
			close(fd);
	}
	if (order)
		fclose(order);
}

int main(void)
{
	mount("proc", "/proc", "proc", 0, 0);
	mount("sysfs", "/sys", "sysfs", 0, 0);
	mount("tracefs", "/sys/kernel/tracing", "tracefs", 0, 0);
	setvbuf(stdout, NULL, _IOLBF, 0);
	load_modules();
	printf("MCOUNTRW-AFF-BEGIN\n");
	fflush(stdout);
	copy_out(TRACING "available_filter_functions");
	printf("MCOUNTRW-AFF-END\n");
	printf("MCOUNTRW-TRACER rc=%d\n", write_file(TRACING "current_tracer", "function"));
	printf("MCOUNTRW-ENABLED %ld\n", count_lines(TRACING "enabled_functions"));
	write_file(TRACING "current_tracer", "nop");
	printf("MCOUNTRW-DONE\n");
	fflush(stdout);
	reboot(RB_POWER_OFF);
	return 0;
}
