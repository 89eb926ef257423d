# Fit a linear model and save it with the requested confidence interval.
args <- commandArgs(trailingOnly = TRUE)
level <- as.numeric(args[which(args == "--confidence") + 1])
fit <- lm(mpg ~ wt, data = mtcars)
ci <- confint(fit, level = level)
dir.create("plots", showWarnings = FALSE)
png("plots/fit.png"); plot(mtcars$wt, mtcars$mpg); abline(fit); dev.off()
saveRDS(list(fit = fit, ci = ci), "results.rds")
print(ci)
